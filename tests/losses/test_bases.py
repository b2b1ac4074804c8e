"""The public loss bases: exported from ``lightning_losses.losses``, the former private names still import as aliases,
every registered loss has a documented ``family``, and one style (``forward``, no ``_fn`` / ``_kwargs`` hooks)."""

from __future__ import annotations

import importlib

import pytest
import torch

import lightning_losses.losses as L
from lightning_losses.losses.base import FAMILIES, LOSSES

ALIASES = [
    ("classification", "_LabelLoss", "LabelLoss"),
    ("multilabel", "_BinaryLoss", "BinaryLoss"),
    ("multilabel", "_SetLevelLoss", "SetLevelLoss"),
    ("regression_robust", "_RegressionLoss", "RegressionLoss"),
    ("distillation", "_DistillationLoss", "DistillationLoss"),
    ("preference", "_PreferenceLoss", "PreferenceLoss"),
    ("preference", "_PairedLoss", "PairedLoss"),
    ("token", "_TokenLoss", "TokenLoss"),
    ("metric_learning", "_EmbeddingLoss", "EmbeddingLoss"),
    ("policy", "_PolicyLoss", "PolicyLoss"),
    ("entropy", "_EntropyTerm", "EntropyTerm"),
]


@pytest.mark.parametrize(("module", "old", "new"), ALIASES)
def test_former_private_base_is_an_alias_of_the_public_one(module, old, new):
    mod = importlib.import_module(f"lightning_losses.losses.{module}")
    assert getattr(mod, old) is getattr(L, new) and new in L.__all__
    assert issubclass(getattr(L, new), L.Loss)


@pytest.mark.parametrize("name", L.list_losses())
def test_every_registered_loss_has_a_documented_family(name):
    cls = LOSSES.get(name)
    assert cls.family in FAMILIES, f"`{name}` ({cls.__name__}) has family {cls.family!r}"


def test_built_in_losses_use_one_style():
    """Every built-in loss writes ``forward`` or inherits it from its family base or from another registered loss
    (``dpo_forward_kl`` is ``dpo`` with its divergence fixed); none uses the ``_fn`` hook."""
    registered = {LOSSES.get(n) for n in L.list_losses()}
    for name in L.list_losses():
        cls = LOSSES.get(name)
        hooks = {"_fn", "_kwargs", "_loss"} & set(vars(cls))
        assert not hooks, f"`{name}` uses the former hooks {sorted(hooks)} instead of `forward`"
        inherited = cls.__base__ in (L.PolicyLoss,) or (cls.__base__ in registered and "forward" in vars(cls.__base__))
        assert "forward" in vars(cls) or inherited, f"`{name}` does not write `forward`"


def test_subclass_of_the_former_paired_base_still_works():
    """Code written against ``_PairedLoss`` (``_fn`` + ``_kwargs``) keeps working."""
    from lightning_losses.functional import preference as P
    from lightning_losses.losses.preference import _PairedLoss

    class Legacy(_PairedLoss):
        _fn = staticmethod(P.ipo)

        def __init__(self, beta: float = 0.5) -> None:
            super().__init__(beta)

    x = torch.tensor([-1.0])
    assert torch.equal(Legacy()(x, x, x, x), L.IPO(beta=0.5)(x, x, x, x))
    assert Legacy.family == "preference" and Legacy.input_names()[0][0] == "chosen_logps"


def test_subclass_of_the_former_embedding_base_still_works():
    """Code written against ``_EmbeddingLoss`` (the ``_loss`` hook) keeps working."""
    from lightning_losses.functional import metric_learning as MF
    from lightning_losses.losses.metric_learning import _EmbeddingLoss

    class Legacy(_EmbeddingLoss):
        def __init__(self) -> None:
            super().__init__(normalize=True, gather=False, validate_args=True)

        def _loss(self, embeddings, target, ref_embeddings, ref_target):
            return MF.supcon(embeddings, target, temperature=0.1, normalize=True, gather=False)

    x, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.allclose(Legacy()(x, y), L.SupCon(gather=False)(embeddings=x, target=y))


def test_label_loss_masks_ignored_labels():
    loss = L.build_loss("focal")
    assert isinstance(loss, L.LabelLoss) and loss.family == "multiclass"
    assert loss.sample_mask(target=torch.tensor([1, -100, 0])).tolist() == [True, False, True]
