"""The ``lightning-losses`` argument parser, importing nothing heavy: the package answers ``--help`` / ``--version``
of the console script with it before importing torch and Lightning (:func:`answer_help_or_version`)."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["SUBCOMMANDS", "Parser", "UsageError", "answer_help_or_version", "build_parser"]

SUBCOMMANDS = ("fit", "validate", "test", "predict")
HELP = {
    "fit": "train (resume with --ckpt_path), then test the fitted weights when the model and data can",
    "validate": "run the validation loop (weights from --ckpt_path)",
    "test": "run the test loop (weights from --ckpt_path)",
    "predict": "run the predict loop (weights from --ckpt_path); predictions.pt in the log folder",
}


class UsageError(Exception):
    """An argument the parser rejects (reported in one line, exit status 2)."""


class Parser(argparse.ArgumentParser):
    """``argparse`` that reports a bad argument in one line (no usage block) and lets :func:`main` exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser(version: str) -> argparse.ArgumentParser:
    """The command's parser; ``version`` is the package version ``--version`` prints."""
    parser = Parser(
        prog="lightning-losses",
        description="Run a lightning_losses recipe: the offline digits demo by default, or any LightningModule and "
        "LightningDataModule given by import path (model: {class_path: my_pkg.MyNet, init_args: {...}}).",
        epilog="Overrides: --section.key value (e.g. --trainer.devices 2 --trainer.strategy ddp).",
    )
    parser.add_argument("--version", action="version", version=f"lightning-losses {version}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    for name in SUBCOMMANDS:
        cmd = sub.add_parser(name, help=HELP[name] + (" (the default command)" if name == "fit" else ""))
        cmd.add_argument(
            "--config", "-c", action="append", help="recipe YAML, merged onto the embedded default (repeatable)"
        )
        cmd.add_argument("--logger", help="csv | wandb | none, a mapping such as '{name: wandb, project: p}', ...")
        cmd.add_argument("--ckpt_path", help="a checkpoint file, `last` or `best` (found under default_root_dir)")
        cmd.add_argument("--print_config", action="store_true", help="validate, print the resolved recipe and exit")
    cmp = sub.add_parser("compare", help="train several recipes over several seeds; table of mean and std + plot")
    cmp.add_argument("recipes", nargs="+", help="recipe paths (label them with name=path)")
    cmp.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    cmp.add_argument("--metrics", default="test/acc,test/nll", help="comma-separated result keys")
    cmp.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    cmp.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    cmp.add_argument("--wandb", action="store_true", help="log every run to offline W&B, grouped by the compare")
    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument("what", nargs="?", default="losses")
    return parser


def answer_help_or_version(version: str) -> None:
    """In the ``lightning-losses`` console script asked for ``--help`` / ``-h`` / ``--version``: print it and exit.

    Importing the package costs seconds (torch, Lightning); the help does not need them.
    """
    argv = sys.argv
    if not argv or os.path.basename(argv[0]) != "lightning-losses" or not {"-h", "--help", "--version"} & set(argv):
        return
    args = argv[1:]
    if not args or args[0] not in (*SUBCOMMANDS, "list", "compare", "-h", "--help", "--version"):
        args = ["fit", *args]
    try:
        build_parser(version).parse_args(args)  # prints and exits (status 0)
    except UsageError as err:
        print(f"lightning-losses: error: {err}", file=sys.stderr)
        sys.exit(2)
