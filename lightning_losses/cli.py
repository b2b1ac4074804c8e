"""The ``lightning-losses`` command: run a recipe (the digits demo, or any model and data by import path).

Usage::

    lightning-losses                                   # = fit on the embedded default recipe (the digits demo)
    lightning-losses fit --config configs/focal.yaml --trainer.devices 2 --trainer.strategy ddp
    lightning-losses fit -c base.yaml -c mine.yaml     # several recipes, merged in order
    lightning-losses fit --model.class_path my_pkg.MyNet --model.init_args.width 64 --data my_pkg.MyData
    lightning-losses fit --config mine.yaml --ckpt_path last      # resume the newest checkpoint
    lightning-losses validate|test|predict --config mine.yaml --ckpt_path best
    lightning-losses fit --print_config                # validate, show the resolved recipe and exit
    lightning-losses list losses                       # registered names (losses, schedules, callbacks)
    lightning-losses compare configs/a.yaml configs/b.yaml --seeds 3 --workers 2 --out runs/compare

Overrides follow LightningCLI's conventions: ``--section.key value`` or ``--section.key=value`` (``key=value``
without dashes works too); ``--model.key`` sets ``model.init_args.key`` of a model given by ``class_path``.
Bad input exits with status 2 and a one-line ``error:`` message, no traceback; an error
raised while training exits with status 1, also in one line (set ``LIGHTNING_LOSSES_TRACEBACK=1`` to see the
traceback).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from lightning_losses._cli_parser import SUBCOMMANDS, UsageError, build_parser
from lightning_losses._validation import suggest
from lightning_losses.errors import ConfigurationError
from lightning_losses.runner import run, run_fit  # re-exported here

__all__ = ["build_parser", "main", "parse_overrides", "run", "run_fit"]


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-losses`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = (*SUBCOMMANDS, "compare", "list")
    if argv and argv[0] not in commands and not argv[0].startswith("-") and "=" not in argv[0]:
        valid = ", ".join(f"`{c}`" for c in commands)
        print(
            f"lightning-losses: error: unknown command `{argv[0]}`{suggest(argv[0], commands)} Commands: {valid}",
            file=sys.stderr,
        )
        return 2
    if not argv or argv[0] not in (*commands, "-h", "--help", "--version"):
        argv = ["fit", *argv]
    import lightning_losses

    parser = build_parser(lightning_losses.__version__)
    try:
        args, rest = parser.parse_known_args(argv)
    except UsageError as err:
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
            compare(
                args.recipes,
                seeds=args.seeds,
                metrics=metrics,
                overrides=overrides,
                out=args.out,
                workers=args.workers,
                wandb=args.wandb,
            )
            return 0
        if args.logger:
            overrides.append(f"logger={args.logger}")
        if args.print_config:
            from omegaconf import OmegaConf

            from lightning_losses._checkpoints import resolve_ckpt_path
            from lightning_losses.config import build_run, load_recipe

            cfg = load_recipe(args.config, overrides)
            resolve_ckpt_path(args.ckpt_path, cfg.trainer.get("default_root_dir", "runs"))
            logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no Trainer banner around the YAML
            build_run(cfg)  # validated as `fit` would, before printing: nothing trains
            print(OmegaConf.to_yaml(cfg), end="")
            return 0
        run(args.command, args.config, overrides, ckpt_path=args.ckpt_path)
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
