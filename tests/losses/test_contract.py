"""Registry-wide contract: every registered loss builds with defaults (or the required arguments below), rejects an
unknown argument with a ConfigurationError, returns ``[N]`` (``[]`` if batch-level) on inputs chosen by its
``family`` and ``input_names()``, and backpropagates finite gradients.

A loss joins this test by setting the class attribute ``family`` (see :class:`lightning_losses.Loss`); when it is not
set, the family is inferred from the input names where they are unambiguous (``pred``, ``embeddings``,
``teacher_logits``, ``chosen_logps``), and otherwise the test fails and asks for it.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import lightning_losses as ll
from lightning_losses.losses.base import FAMILIES, LOSSES

N, C, D, T = 6, 4, 5, 3

# Arguments a loss needs because it has no default for them (add a row when you register such a loss).
REQUIRED_ARGS: dict[str, dict] = {
    "comp_sum": {"tau": 1.5},
    "spherical_z_loss": {"a": 1.0, "b": 2.0},
    "spectral_decoupling": {"lam": 0.1},
    # proxy losses (issue 18): the proxies' shape
    "arcface": {"num_classes": C, "embedding_size": D},
    "cosface": {"num_classes": C, "embedding_size": D},
    "sub_center_arcface": {"num_classes": C, "embedding_size": D},
    "proxy_anchor": {"num_classes": C, "embedding_size": D},
    "ldam": {"samples_per_class": [100, 20, 5, 1]},  # issue 18: the class counts set the margins
    "mat": {"num_classes": C},  # issue 20: the width of the held-out logits table
}

# Inputs for losses whose family pool does not fit (extra optional inputs they need, other shapes).
INPUT_OVERRIDES: dict[str, dict] = {
    "gaussian_nll": {"var": torch.rand(N) + 0.1},
    "hl_gauss": {"logits": torch.randn(N, 51), "target": torch.linspace(-9.0, 9.0, N)},
    "ordinal_wasserstein": {"logits": torch.randn(N, C), "target": torch.tensor([0, 1, 2, 3, 0, 1])},
    # preference family (issue 4): optional inputs these losses need
    "kto": {"kl_logps": -torch.rand(N), "ref_kl_logps": -torch.rand(N)},
    "rpo": {"chosen_lengths": torch.tensor([1, 2, 3, 4, 5, 6])},
    "cpo": {"chosen_lengths": torch.tensor([1, 2, 3, 4, 5, 6])},
    # memory-efficient token loss (issue 4): hidden states and output weight instead of logits
    "linear_cross_entropy": {"hidden": torch.randn(N, T, D), "weight": torch.randn(C, D)},
    # AugMix consistency (issue 18): K = 3 views of each sample on axis 1
    "jsd": {"logits": torch.randn(N, 3, C)},
    "poisson_nll": {"target": torch.tensor([0.0, 1.0, 2.0, 3.0, 0.0, 5.0])},  # counts
    "dual_head_kd": {"aux_logits": torch.randn(N, C)},  # the auxiliary head (issue 20)
    "ens_loss": {"logits": torch.randn(N), "target": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])},  # binary only
    # environment penalties (issue 20): per-sample environment ids
    "irm_v1": {"group": torch.tensor([0, 1, 0, 1, 1, 0])},
    "vrex": {"group": torch.tensor([0, 1, 0, 1, 1, 0])},
    "coral": {"group": torch.tensor([0, 1, 0, 1, 1, 0])},
    # LD-DPO (issue 18): token log-probs and answer masks
    "ld_dpo": {k: -torch.rand(N, T) for k in ("chosen_token_logps", "rejected_token_logps", "ref_chosen_token_logps")}
    | {
        "ref_rejected_token_logps": -torch.rand(N, T),
        "chosen_mask": torch.ones(N, T),
        "rejected_mask": torch.ones(N, T),
    },
    "steer": {"entropy": torch.rand(N, T)},  # STEER (issue 20): the current policy's per-token entropy
    "mat": {"index": torch.arange(N)},  # issue 20: dataset positions keying the held-out table
}


def _family(cls) -> str:
    family = getattr(cls, "family", None)
    if family is not None:
        return family
    required, _ = cls.input_names()
    for name, fam in (
        ("pred", "regression"),
        ("embeddings", "embedding"),
        ("teacher_logits", "distillation"),
        ("chosen_logps", "preference"),
    ):
        if name in required:
            return fam
    pytest.fail(f"loss class {cls.__name__} must set the class attribute `family` (one of {FAMILIES})")


def _inputs(family: str, required: tuple[str, ...], name: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    pools = {
        "multiclass": {"logits": torch.randn(N, C, generator=g), "target": labels},
        "binary": {"logits": torch.randn(N, C, generator=g), "target": (torch.rand(N, C, generator=g) > 0.5).float()},
        "regression": {"pred": torch.randn(N, generator=g), "target": torch.randn(N, generator=g)},
        "embedding": {"embeddings": torch.randn(N, D, generator=g), "target": labels},
        "distillation": {
            "logits": torch.randn(N, C, generator=g),
            "teacher_logits": torch.randn(N, C, generator=g),
            "target": labels,
        },
        "preference": {k: -torch.rand(N, generator=g) for k in ("chosen_logps", "rejected_logps")}
        | {k: -torch.rand(N, generator=g) for k in ("ref_chosen_logps", "ref_rejected_logps")}
        | {k: -torch.rand(N, generator=g) for k in ("logps", "ref_logps")}
        | {"target": labels % 2, "chosen_lengths": labels + 1, "rejected_lengths": labels + 2},
        "token": {
            "logits": torch.randn(N, T, C, generator=g),
            "target": torch.randint(0, C, (N, T), generator=g),
            "cost_embedding": torch.randn(C, D, generator=g),  # emo's frozen transport-cost embedding
        },
        "policy": {
            "logps": -torch.rand(N, T, generator=g),
            "old_logps": -torch.rand(N, T, generator=g),
            "advantages": torch.randn(N, generator=g),
            "mask": torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1]]),
        },
    }
    pool = {**pools[family], **INPUT_OVERRIDES.get(name, {})}
    required = tuple(required) + tuple(k for k in INPUT_OVERRIDES.get(name, {}) if k not in required)
    missing = [name for name in required if name not in pool]
    if missing:
        pytest.fail(f"no contract input for {missing} in family `{family}`: extend tests/losses/test_contract.py")
    return {
        name: pool[name].clone().requires_grad_(pool[name].is_floating_point() and name != "target")
        for name in required
    }


@pytest.mark.parametrize("name", ll.list_losses())
def test_loss_contract(name):
    cls = LOSSES.get(name)
    family = _family(cls)
    assert family in FAMILIES, f"`{name}`: unknown family {family!r}"
    kwargs = REQUIRED_ARGS.get(name, {})
    loss = ll.build_loss(name, **kwargs)
    assert isinstance(loss, ll.Loss)

    with pytest.raises(ll.ConfigurationError, match=rf"loss `{name}` got an unexpected argument `not_an_argument`"):
        ll.build_loss(name, **kwargs, not_an_argument=1)
    if "validate_args" in inspect.signature(cls).parameters:
        with pytest.raises(ll.ConfigurationError, match=r"`validate_args` must be a bool \(True or False\), got 'no'"):
            ll.build_loss(name, **kwargs, validate_args="no")

    required, optional = loss.input_names()
    inputs = _inputs(family, required + tuple(k for k in optional if k == "target"), name)
    out = loss(**inputs)
    expected = () if loss.batch_level else (N,)
    assert out.shape == expected, f"`{name}` returned shape {list(out.shape)}, expected {list(expected)}"
    assert out.is_floating_point() and torch.isfinite(out).all()
    out.sum().backward()
    # at least one input receives a gradient (teacher / reference inputs may be detached by design); all finite
    grads = [t.grad for t in inputs.values() if t.requires_grad and t.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), f"`{name}` did not backprop"


def test_family_is_required_where_inputs_are_ambiguous():
    class Ambiguous(ll.Loss):
        def forward(self, logits, target):
            return logits.sum(-1)

    class Regression(ll.Loss):
        def forward(self, pred, target):
            return pred

    with pytest.raises(pytest.fail.Exception, match=r"Ambiguous must set the class attribute `family`"):
        _family(Ambiguous)
    assert _family(Regression) == "regression"
    assert _family(LOSSES.get("focal")) == "multiclass" and _family(LOSSES.get("bce")) == "binary"


def _integer_label_inputs(name: str) -> dict[str, torch.Tensor] | None:
    """The contract inputs of loss ``name`` when they hold integer labels ``target``, else ``None``."""
    cls = LOSSES.get(name)
    loss = ll.build_loss(name, **REQUIRED_ARGS.get(name, {}))
    required, optional = loss.input_names()
    inputs = _inputs(_family(cls), required + tuple(k for k in optional if k == "target"), name)
    target = inputs.get("target")
    return inputs if target is not None and not target.is_floating_point() else None


INTEGER_LABEL_LOSSES = [name for name in ll.list_losses() if _integer_label_inputs(name) is not None]


def test_integer_label_losses_are_found():
    assert {"cross_entropy", "focal", "token_cross_entropy", "pld", "linear_cross_entropy"} <= set(INTEGER_LABEL_LOSSES)


@pytest.mark.parametrize("name", INTEGER_LABEL_LOSSES)
def test_integer_labels_of_any_width_equal_int64(name):
    """Integer labels arrive as int32 (numpy), int16, int8 or uint8 too: each gives the int64 result."""
    loss = ll.build_loss(name, **REQUIRED_ARGS.get(name, {}))
    inputs = _integer_label_inputs(name)
    target = inputs["target"]
    expected = loss(**inputs)
    for dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        if dtype == torch.uint8 and (target < 0).any():
            continue
        narrow = {**inputs, "target": target.to(dtype)}
        torch.testing.assert_close(loss(**narrow), expected, msg=f"`{name}` with {dtype} labels")


def test_not_ignored_does_not_wrap_an_ignore_index_the_dtype_cannot_hold():
    from lightning_losses._validation.tensors import not_ignored

    labels = torch.tensor([156, 3, 255, 0])
    assert not_ignored(labels.to(torch.uint8), -100).all()  # -100 as uint8 would be 156
    assert torch.equal(not_ignored(labels.to(torch.uint8), 255), labels != 255)
    assert not_ignored(torch.tensor([-100, 1], dtype=torch.int8), -1000).all()
    assert torch.equal(not_ignored(torch.tensor([-100, 1]), -100), torch.tensor([False, True]))


# losses whose arguments fix the number of classes (per-class margins): the 200-class check below does not apply
FIXED_CLASSES = {"ldam"}


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in INTEGER_LABEL_LOSSES
        if _family(LOSSES.get(n)) == "multiclass"
        and set(LOSSES.get(n).input_names()[0]) <= {"logits", "target"}
        and n not in FIXED_CLASSES
    ],
)
def test_uint8_label_156_is_a_class_not_ignore_index(name):
    """With ignore_index -100, a uint8 label 156 is a class (torch would compare it with -100 cast to uint8 = 156)."""
    loss = ll.build_loss(name, **REQUIRED_ARGS.get(name, {}))
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(3, 200, generator=g, dtype=torch.float64), torch.tensor([156, 3, 7])
    expected = loss(logits=logits, target=labels)
    narrow = labels.to(torch.uint8)
    torch.testing.assert_close(loss(logits=logits, target=narrow), expected)
    mask = loss.sample_mask(logits=logits, target=narrow)
    assert mask is None or bool(mask.all())
    objective = ll.Objective([ll.objective.Term(name, loss, ll.schedules.Constant(1.0))])
    for reweighter in (None, lambda losses, **_: torch.ones_like(losses)):
        value = objective({"logits": logits, "target": narrow}, reweighter=reweighter).value
        torch.testing.assert_close(value, expected.mean())
