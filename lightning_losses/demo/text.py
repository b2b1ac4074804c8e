"""Offline character-level text: the docstrings of standard-library modules (ships with Python, no download).

:func:`stdlib_corpus` gathers, for a fixed list of modules, the module docstring and the docstrings of its public
classes, functions and methods (``inspect.getdoc``, members sorted by name), so the text is deterministic for a given
Python version (it differs slightly between versions). Characters are mapped to a fixed 97-symbol vocabulary
(newline, printable ASCII 32-126, and one "other" symbol).

:class:`CharDataModule` cuts the text into windows of ``seq_len + 1`` characters: the first 90% for training
(random windows), the last 10% for validation (consecutive windows; the last one padded with ``ignore_index``).
Batches are dicts ``x [B, T]`` (input ids), ``target [B, T]`` (the next characters), ``index [B]``.
"""

from __future__ import annotations

import importlib
import inspect

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_losses._validation import check_int, check_number
from lightning_losses.demo.data import DictDataset

__all__ = ["STDLIB_MODULES", "VOCAB", "CharDataModule", "decode", "encode", "stdlib_corpus"]

STDLIB_MODULES = (
    "argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum",
    "fractions", "functools", "heapq", "inspect", "ipaddress", "itertools", "json", "logging", "pathlib", "pickle",
    "random", "re", "shutil", "statistics", "string", "tarfile", "textwrap", "threading", "typing", "unittest",
    "zipfile",
)  # fmt: skip
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127)) + "\x00"  # the last symbol stands for any other character
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}


def encode(text: str) -> torch.Tensor:
    """Character ids ``[len(text)]`` (int64) in :data:`VOCAB`; characters outside it map to the last id.

    Example:
        >>> encode("a\\n"), decode(encode("é!"))
        (tensor([66,  0]), '\\x00!')
    """
    other = len(VOCAB) - 1
    return torch.tensor([_INDEX.get(ch, other) for ch in text], dtype=torch.int64)


def decode(ids: torch.Tensor) -> str:
    """Inverse of :func:`encode` (ignored positions, i.e. negative ids, are dropped)."""
    return "".join(VOCAB[i] for i in ids.tolist() if i >= 0)


def _docs(module: object) -> list[str]:
    name = getattr(module, "__name__", "")
    out = [inspect.getdoc(module) or ""]
    for attr in sorted(getattr(module, "__all__", None) or dir(module)):
        if attr.startswith("_"):
            continue
        obj = getattr(module, attr, None)
        if getattr(obj, "__module__", None) != name or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        out.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            for meth_name, meth in sorted(vars(obj).items()):
                if not meth_name.startswith("_") and inspect.isfunction(meth):
                    out.append(inspect.getdoc(meth) or "")
    return [d for d in out if d]


def stdlib_corpus(modules: tuple[str, ...] = STDLIB_MODULES, max_chars: int | None = None) -> str:
    """Docstrings of ``modules`` joined by blank lines (deterministic for a Python version).

    Example:
        >>> text = stdlib_corpus(("textwrap",))
        >>> text.startswith("Text wrapping and filling.") and len(text) > 1000
        True
    """
    parts: list[str] = []
    for name in modules:
        parts.extend(_docs(importlib.import_module(name)))
    text = "\n\n".join(parts)
    return text if max_chars is None else text[:max_chars]


class CharDataModule(L.LightningDataModule):
    """Character windows from :func:`stdlib_corpus` (see the module docstring).

    Args:
        seq_len: characters per training window ``T``. Default 64.
        batch_size: windows per batch. Default 64.
        max_chars: cap on the corpus length (``None``: everything, about 0.2M characters). Default ``None``.
        val_fraction: tail of the text held out. Default 0.1.
        train_windows: random training windows per epoch. Default 8192.
        seed: seed of the window positions. Default 0.
        ignore_index: label of the padding in the last validation window. Default -100.
    """

    def __init__(
        self,
        seq_len: int = 64,
        batch_size: int = 64,
        max_chars: int | None = None,
        val_fraction: float = 0.1,
        train_windows: int = 8192,
        seed: int = 0,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.seq_len = check_int("seq_len", seq_len, low=1)
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.max_chars = None if max_chars is None else check_int("max_chars", max_chars, low=1000)
        self.val_fraction = check_number("val_fraction", val_fraction, low=0.0, high=0.5, low_open=True)
        self.train_windows = check_int("train_windows", train_windows, low=1)
        self.seed = check_int("seed", seed, low=0)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.vocab_size = len(VOCAB)
        self.train_set: DictDataset | None = None
        self.val_set: DictDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        ids = encode(stdlib_corpus(max_chars=self.max_chars))
        split = int(len(ids) * (1.0 - self.val_fraction))
        train, val = ids[:split], ids[split:]
        t = self.seq_len
        g = torch.Generator().manual_seed(self.seed)
        starts = torch.randint(0, len(train) - t - 1, (self.train_windows,), generator=g)
        windows = torch.stack([train[s : s + t + 1] for s in starts.tolist()])
        self.train_set = DictDataset(x=windows[:, :-1].clone(), target=windows[:, 1:].clone())
        n_val = (len(val) - 1 + t - 1) // t
        x = torch.zeros(n_val, t, dtype=torch.int64)
        target = torch.full((n_val, t), self.ignore_index, dtype=torch.int64)
        for i in range(n_val):
            chunk = val[i * t : i * t + t + 1]
            x[i, : len(chunk) - 1] = chunk[:-1]
            target[i, : len(chunk) - 1] = chunk[1:]
        self.val_set = DictDataset(x=x, target=target)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=4 * self.batch_size)
