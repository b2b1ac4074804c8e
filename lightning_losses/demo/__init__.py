"""Tiny offline datamodules and models for the CLI, examples and tests (like ``lightning.pytorch.demos``)."""

from lightning_losses.demo.char_lm import CharLM
from lightning_losses.demo.data import DictDataset, DigitsDataModule, make_digits_splits
from lightning_losses.demo.model import DigitsClassifier
from lightning_losses.demo.text import CharDataModule, stdlib_corpus

__all__ = [
    "CharDataModule",
    "CharLM",
    "DictDataset",
    "DigitsClassifier",
    "DigitsDataModule",
    "make_digits_splits",
    "stdlib_corpus",
]
