"""The character-level LM demo: the corpus and windows, and every recipe in configs/lm/ builds and trains briefly."""

import math
import runpy
from pathlib import Path

import pytest
import torch

from lightning_losses.demo import CharDataModule, CharLM
from lightning_losses.demo.text import VOCAB, decode, encode, stdlib_corpus
from lightning_losses.errors import ConfigurationError

ROOT = Path(__file__).parents[2]
RECIPES = sorted((ROOT / "configs" / "lm").glob("*.yaml"))
FAST = [
    "data.max_chars=20000",
    "data.seq_len=16",
    "data.batch_size=8",
    "data.train_windows=64",
    "model.hidden_dim=16",
    "model.embed_dim=8",
    "trainer.max_steps=3",
]


@pytest.fixture(scope="module")
def demo():
    return runpy.run_path(str(ROOT / "examples" / "char_lm.py"))


def test_recipes_exist():
    assert {p.stem for p in RECIPES} >= {"char_cross_entropy", "char_entropy_target"}


def test_corpus_is_deterministic_text_and_windows_are_shifted():
    text = stdlib_corpus(max_chars=5000)
    assert text == stdlib_corpus(max_chars=5000) and len(text) == 5000
    assert decode(encode("Hello\n")) == "Hello\n" and len(VOCAB) == 97
    dm = CharDataModule(seq_len=16, batch_size=4, max_chars=3000, train_windows=10, val_fraction=0.1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "target", "index"} and batch["x"].shape == batch["target"].shape == (4, 16)
    assert (batch["x"][:, 1:] == batch["target"][:, :-1]).all()  # the target is the input shifted by one
    val = dm.val_set.tensors
    ids = encode(stdlib_corpus(max_chars=3000))[2700:]
    assert (val["target"][val["target"] != -100] == ids[1:]).all()  # every held-out character scored once
    assert (val["target"][-1] == -100).any()  # the last window is padded with ignore_index
    with pytest.raises(ConfigurationError, match=r"`seq_len` must be an integer >= 1, got 0"):
        CharDataModule(seq_len=0)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_lm_recipe_builds_and_trains(demo, recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = demo["load"](recipe, FAST)
    assert cfg.trainer.max_steps == 3 and set(cfg.objective)  # recipe merged onto the defaults, overrides applied
    fast = FAST + (["callbacks.entropy_control.warmup_steps=0"] if "entropy_control" in cfg.callbacks else [])
    out = demo["run"](recipe, 0, fast)
    assert out["steps"] == 3
    for key in ("val/bpc", "val/ppl", "val/entropy"):
        assert math.isfinite(out[key]) and math.isfinite(out[key + "_before"])
    # an untrained model is close to uniform over the 97 symbols
    assert abs(out["val/entropy_before"] - math.log(97)) < 0.1
    assert math.isclose(out["val/ppl"], 2 ** out["val/bpc"], rel_tol=1e-9)
    if "entropy_target" in out:
        assert math.isfinite(out["train_entropy"]) and out["beta"] != 0.0  # the controller acted


def test_model_passes_token_tensors_to_the_objective():
    model = CharLM(vocab_size=len(VOCAB), hidden_dim=8, embed_dim=4, objective={"emo": {}, "mixce": {"eta": 0.5}})
    x = torch.randint(0, len(VOCAB), (2, 5))
    batch = {"x": x, "target": x.roll(-1, 1), "index": torch.arange(2)}
    loss = model.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and model.embed.weight.grad is not None
    assert set(model.objective_output.terms) == {"emo", "mixce"}
