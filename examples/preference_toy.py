"""A toy preference task that the DPO family visibly learns, offline on CPU (seconds per run).

Prompts are random token strings; the *preferred* answer follows a rule (answer token t = prompt token t + 1 mod V),
the *rejected* answer is random. The policy is a tiny causal model (prompt context + position + previous token ->
next-token logits); the reference is a frozen copy of the initial policy. Training uses ``LossesMixin`` with the
objective of a recipe in ``configs/preference/``; the script prints, on held-out pairs, before and after training:

* ``pref_acc``: fraction of pairs where the policy prefers the chosen answer (``log π(y_w) > log π(y_l)``);
* ``margin``: mean implicit reward margin ``Δ`` (log-ratio to the reference, chosen minus rejected);
* ``rule_acc``: greedy-decoding token accuracy against the rule (chance: 1/V).

    python examples/preference_toy.py configs/preference/dpo.yaml [more recipes] --seeds 0 1 2

Per-sequence log-probs (summed over the answer tokens) come from ``ll.functional.sequence_logps``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from lightning_losses.functional import wpo_log_weights

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {
    "seed": 0,
    "data": {"vocab": 8, "length": 4, "train_pairs": 2048, "val_pairs": 512, "batch_size": 64},
    "model": {"hidden_dim": 64, "lr": 3.0e-3},
    "objective": {"dpo": {"beta": 0.1}},
    "callbacks": {},
    "trainer": {"max_epochs": 4},
}


def make_pairs(n: int, vocab: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    prompt = torch.randint(0, vocab, (n, length), generator=generator)
    chosen = (prompt + 1) % vocab
    rejected = torch.randint(0, vocab, (n, length), generator=generator)
    same = (rejected == chosen).all(-1)
    rejected[same, 0] = (chosen[same, 0] + 1) % vocab  # never identical to the chosen answer
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


class TinyPolicy(nn.Module):
    """Next-token logits from (one-hot prompt, position, previous token)."""

    def __init__(self, vocab: int, length: int, hidden_dim: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.context = nn.Linear(vocab * length, hidden_dim)
        self.position = nn.Embedding(length, hidden_dim)
        self.previous = nn.Embedding(vocab + 1, hidden_dim)  # index `vocab` = beginning of answer
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, vocab))

    def forward(self, prompt: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        n, t = answer.shape
        ctx = self.context(nn.functional.one_hot(prompt, self.vocab).flatten(1).float())
        prev = torch.cat([torch.full((n, 1), self.vocab, dtype=answer.dtype), answer[:, :-1]], dim=1)
        h = ctx[:, None, :] + self.position(torch.arange(t))[None] + self.previous(prev)
        return self.head(h)  # [N, T, V]

    @torch.no_grad()
    def greedy(self, prompt: torch.Tensor, length: int) -> torch.Tensor:
        answer = torch.zeros(prompt.shape[0], length, dtype=torch.long)
        for t in range(length):
            answer[:, t] = self(prompt, answer)[:, t].argmax(-1)
        return answer


class PreferencePolicy(ll.LossesMixin, L.LightningModule):
    def __init__(self, objective: Any, vocab: int, length: int, hidden_dim: int = 64, lr: float = 3e-3) -> None:
        super().__init__()
        self.policy = TinyPolicy(vocab, length, hidden_dim)
        self.reference = copy.deepcopy(self.policy).requires_grad_(False).eval()
        self.lr = lr
        self.configure_objective(objective)

    def _tensors(self, prompt, chosen, rejected) -> dict[str, torch.Tensor]:
        logits_c, logits_r = self.policy(prompt, chosen), self.policy(prompt, rejected)
        with torch.no_grad():
            ref_c = ll.functional.sequence_logps(self.reference(prompt, chosen), chosen)
            ref_r = ll.functional.sequence_logps(self.reference(prompt, rejected), rejected)
        lengths = torch.full((prompt.shape[0],), chosen.shape[1])
        return {
            "chosen_logps": ll.functional.sequence_logps(logits_c, chosen),
            "rejected_logps": ll.functional.sequence_logps(logits_r, rejected),
            "ref_chosen_logps": ref_c,
            "ref_rejected_logps": ref_r,
            "chosen_lengths": lengths,
            "rejected_lengths": lengths,
            "chosen_logw": wpo_log_weights(logits_c, chosen),
            "rejected_logw": wpo_log_weights(logits_r, rejected),
        }

    def training_step(self, batch, batch_idx):
        return self.compute_loss(**self._tensors(*batch))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.policy.parameters(), lr=self.lr)

    @torch.no_grad()
    def evaluate(self, prompt, chosen, rejected) -> dict[str, float]:
        t = self._tensors(prompt, chosen, rejected)
        margin = (t["chosen_logps"] - t["ref_chosen_logps"]) - (t["rejected_logps"] - t["ref_rejected_logps"])
        rule = (self.policy.greedy(prompt, chosen.shape[1]) == chosen).float().mean()
        return {
            "pref_acc": float((t["chosen_logps"] > t["rejected_logps"]).float().mean()),
            "margin": float(margin.mean()),
            "rule_acc": float(rule),
        }


def load(recipe: str | Path, overrides: list[str] | None = None) -> Any:
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.load(recipe), OmegaConf.from_dotlist(overrides or []))
    if "objective" in OmegaConf.load(recipe):  # the recipe's objective replaces the default wholesale
        cfg.objective = OmegaConf.load(recipe).objective
    return cfg


def run(recipe: str | Path, seed: int = 0, overrides: list[str] | None = None) -> dict[str, float]:
    """Train on one recipe with one seed; returns the held-out metrics before (``*_before``) and after."""
    cfg = load(recipe, overrides)
    L.seed_everything(seed, verbose=False)
    g = torch.Generator().manual_seed(seed)
    d = cfg.data
    train = make_pairs(d.train_pairs, d.vocab, d.length, g)
    val = make_pairs(d.val_pairs, d.vocab, d.length, g)
    objective = OmegaConf.to_container(cfg.objective, resolve=True)
    model = PreferencePolicy(objective, d.vocab, d.length, **cfg.model)
    before = model.evaluate(val["prompt"], val["chosen"], val["rejected"])
    loader = DataLoader(TensorDataset(train["prompt"], train["chosen"], train["rejected"]), d.batch_size, shuffle=True)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        callbacks=ll.build_callbacks(OmegaConf.to_container(cfg.callbacks, resolve=True) or None),
        **OmegaConf.to_container(cfg.trainer, resolve=True),
    )
    trainer.fit(model, loader)
    after = model.evaluate(val["prompt"], val["chosen"], val["rejected"])
    return {**{f"{k}_before": v for k, v in before.items()}, **after}


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=[str(ROOT / "configs" / "preference" / "dpo.yaml")])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", nargs="*", default=[], help="dotlist overrides, e.g. trainer.max_epochs=1")
    args = parser.parse_args(argv)
    results = {}
    print(f"{'recipe':<12} {'seed':>4} | {'pref_acc':>15} {'margin':>15} {'rule_acc':>15}   (before -> after)")
    for recipe in args.recipes:
        name = Path(recipe).stem
        results[name] = []
        for seed in args.seeds:
            r = run(recipe, seed, args.set)
            results[name].append(r)
            cells = " ".join(f"{r[k + '_before']:>6.3f} -> {r[k]:>6.3f}" for k in ("pref_acc", "margin", "rule_acc"))
            print(f"{name:<12} {seed:>4} | {cells}")
    return results


if __name__ == "__main__":
    main()
