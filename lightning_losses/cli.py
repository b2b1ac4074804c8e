"""The ``lightning-losses`` command: train the digits demo with any recipe and print a results table.

Usage::

    lightning-losses                                   # = fit on the embedded default recipe
    lightning-losses fit --config configs/focal.yaml --trainer.devices 2 --trainer.strategy ddp
    lightning-losses fit --objective.cross_entropy.label_smoothing 0.1 --logger wandb
    lightning-losses fit --print_config                # validate, show the resolved recipe and exit
    lightning-losses list losses                       # registered names (losses, schedules, callbacks)
    lightning-losses compare configs/a.yaml configs/b.yaml --seeds 3 --out runs/compare

Overrides follow LightningCLI's conventions: ``--section.key value`` or ``--section.key=value`` (``key=value``
without dashes works too). Bad input exits with status 2 and a one-line ``error:`` message, no traceback; an error
raised while training exits with status 1, also in one line (set ``LIGHTNING_LOSSES_TRACEBACK=1`` to see the
traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from lightning_losses.errors import ConfigurationError
from lightning_losses.runner import run_fit  # moved to lightning_losses.runner; re-exported here

__all__ = ["main", "parse_overrides", "run_fit"]


def parse_overrides(args: Sequence[str]) -> list[str]:
    """Turn ``["--trainer.devices", "2", "--a.b=c", "d.e=f"]`` into ``["trainer.devices=2", "a.b=c", "d.e=f"]``."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                out.append(key)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out.append(f"{key}={args[i + 1]}")
                i += 1
            else:
                raise ConfigurationError(f"override `{arg}` needs a value, e.g. `{arg} VALUE`")
        elif "=" in arg:
            out.append(arg)
        else:
            raise ConfigurationError(f"cannot parse argument {arg!r}; expected `--key.sub value` or `key.sub=value`")
        i += 1
    return out


def _list(what: str) -> list[str]:
    import lightning_losses as ll

    tables = {
        "losses": ll.list_losses,
        "schedules": ll.SCHEDULES.list,
        "callbacks": ll.list_callbacks,
    }
    for name, fn in ll.extra_listings().items():
        tables[name] = fn
    if what not in tables:
        raise ConfigurationError(f"`list` takes one of {', '.join(f'`{k}`' for k in tables)}, got {what!r}")
    return tables[what]()


class _UsageError(Exception):
    """An argument the parser rejects (reported in one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """``argparse`` that reports a bad argument in one line (no usage block) and lets :func:`main` exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lightning-losses",
        description="Train the offline digits demo with a lightning_losses recipe and print a results table.",
        epilog="Overrides: --section.key value (e.g. --trainer.devices 2 --trainer.strategy ddp).",
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    fit = sub.add_parser("fit", help="train, test and print results (the default command)")
    fit.add_argument("--config", "-c", help="recipe YAML (merged onto the embedded default)")
    fit.add_argument("--logger", help="csv | wandb | none, or a mapping such as '{name: wandb, project: p}'")
    fit.add_argument("--print_config", action="store_true", help="validate, print the resolved recipe and exit")
    cmp = sub.add_parser("compare", help="train several recipes over several seeds; table of mean and std + plot")
    cmp.add_argument("recipes", nargs="+", help="recipe paths (label them with name=path)")
    cmp.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    cmp.add_argument("--metrics", default="test/acc,test/nll", help="comma-separated result keys")
    cmp.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    lst = sub.add_parser("list", help="list registered components")
    lst.add_argument("what", nargs="?", default="losses")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-losses`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("fit", "list", "compare", "-h", "--help"):
        argv = ["fit", *argv]
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except _UsageError as err:
        print(f"lightning-losses: error: {err}", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            if rest:
                raise ConfigurationError(f"unexpected arguments {rest}")
            print("\n".join(_list(args.what)))
            return 0
        overrides = parse_overrides(rest)
        if args.command == "compare":
            from lightning_losses.compare import compare

            metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
            compare(args.recipes, seeds=args.seeds, metrics=metrics, overrides=overrides, out=args.out)
            return 0
        if args.logger:
            overrides.append(f"logger={args.logger}")
        if args.print_config:
            from omegaconf import OmegaConf

            from lightning_losses.config import build_run, load_recipe

            cfg = load_recipe(args.config, overrides)
            logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no Trainer banner around the YAML
            build_run(cfg)  # validated as `fit` would, before printing: nothing trains
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        run_fit(args.config, overrides)
    except ConfigurationError as err:
        print(f"lightning-losses: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - raised while training: one line unless the traceback is asked for
        if os.environ.get("LIGHTNING_LOSSES_TRACEBACK", "") not in ("", "0"):
            raise
        message = " ".join(str(err).split())
        print(
            f"lightning-losses: error: {type(err).__name__}: {message} "
            "(set LIGHTNING_LOSSES_TRACEBACK=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
