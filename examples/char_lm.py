"""A tiny character-level language model on the standard library's docstrings, offline on CPU (a couple of minutes).

The text ships with Python (``lightning_losses.demo.text.stdlib_corpus``); the model is a one-layer GRU
(``lightning_losses.demo.CharLM``) trained with the objective and callbacks of a recipe in ``configs/lm/`` (token
cross entropy with an entropy target by default). Prints, on the held-out tail of the text, bits per character,
perplexity and the mean token entropy, and the controller's last global training entropy against its target::

    python examples/char_lm.py configs/lm/char_entropy_target.yaml [more recipes] [--set trainer.max_steps=100]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import OmegaConf

import lightning_losses as ll
from lightning_losses.demo import CharDataModule, CharLM

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {
    "seed": 0,
    "data": {"seq_len": 64, "batch_size": 32, "max_chars": None, "train_windows": 8192},
    "model": {"embed_dim": 32, "hidden_dim": 128, "lr": 3.0e-3},
    "objective": {"token_cross_entropy": {}},
    "callbacks": {},
    "trainer": {"max_steps": 600},
}


def load(recipe: str | Path, overrides: list[str] | None = None) -> Any:
    """The recipe merged onto :data:`DEFAULTS` (its ``objective`` replaces the default), then the dotlist overrides."""
    raw = OmegaConf.load(recipe)
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), raw)
    if "objective" in raw:
        cfg.objective = raw.objective
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides or []))


def run(recipe: str | Path, seed: int | None = None, overrides: list[str] | None = None) -> dict[str, float]:
    """Train on one recipe; returns the validation metrics before (``*_before``) and after training."""
    cfg = load(recipe, overrides)
    seed = cfg.seed if seed is None else seed
    L.seed_everything(seed, verbose=False)
    dm = CharDataModule(seed=seed, **OmegaConf.to_container(cfg.data, resolve=True))
    model = CharLM(
        vocab_size=dm.vocab_size,
        objective=OmegaConf.to_container(cfg.objective, resolve=True),
        **OmegaConf.to_container(cfg.model, resolve=True),
    )
    callbacks = ll.build_callbacks(OmegaConf.to_container(cfg.callbacks, resolve=True) or None)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **OmegaConf.to_container(cfg.trainer, resolve=True),
    )
    trainer.validate(model, datamodule=dm, verbose=False)
    before = dict(model.val_metrics)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    trainer.validate(model, datamodule=dm, verbose=False)
    out = {**{f"{k}_before": v for k, v in before.items()}, **model.val_metrics, "train_seconds": seconds}
    out["steps"] = float(trainer.global_step)
    controls = [cb for cb in callbacks if isinstance(cb, ll.EntropyControl) and cb.controller is not None]
    if controls:
        cb = controls[0]
        out["entropy_target"] = cb.controller.target_at(trainer.global_step)
        out["train_entropy"] = float(cb.last_entropy) if cb.last_entropy is not None else float("nan")
        out["beta"] = float(cb.controller.beta)
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=[str(ROOT / "configs" / "lm" / "char_entropy_target.yaml")])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="dotlist overrides, e.g. trainer.max_steps=100")
    args = parser.parse_args(argv)
    results = {}
    print(f"{'recipe':<22} {'steps':>5} {'bpc':>15} {'ppl':>15} {'entropy':>15} {'target':>7} {'train H':>7} {'s':>5}")
    for recipe in args.recipes:
        name = Path(recipe).stem
        r = results[name] = run(recipe, args.seed, args.set)
        cells = " ".join(f"{r[k + '_before']:>6.3f} -> {r[k]:>5.3f}" for k in ("val/bpc", "val/ppl", "val/entropy"))
        target = (
            f"{r['entropy_target']:>7.3f} {r['train_entropy']:>7.3f}" if "entropy_target" in r else f"{'-':>7} {'-':>7}"
        )
        print(f"{name:<22} {int(r['steps']):>5} {cells} {target} {r['train_seconds']:>5.0f}")
    return results


if __name__ == "__main__":
    main()
