"""Issue 3's catalog: every canonical name and argument name exists with the stated default, and builds with them."""

from __future__ import annotations

import inspect

import pytest
import torch

import lightning_losses as ll
from lightning_losses.losses.base import LOSSES

REQUIRED = object()  # the issue names the argument without a default

# name -> {argument: default stated in the issue (REQUIRED: no default stated)}, and arguments to build it with
CATALOG: dict[str, dict] = {
    "cross_entropy": {"label_smoothing": 0.0, "weight": None, "ignore_index": -100},
    "focal": {"gamma": 2.0, "alpha": None},
    "poly1": {"epsilon": 1.0},
    "poly_focal": {"epsilon": 1.0, "gamma": 2.0},
    "comp_sum": {"tau": REQUIRED},
    "gce": {"q": 0.7},
    "mae": {},
    "sce": {"alpha": 0.1, "beta": 1.0, "A": -4.0},
    "apl": {"active": "nce", "passive": "rce", "alpha": 1.0, "beta": 1.0},
    "ldr_kl": {"lam": 1.0, "margin": REQUIRED},
    "squentropy": {},
    "stablemax_cross_entropy": {},
    "spherical_z_loss": {"a": REQUIRED, "b": REQUIRED},
    "ovr": {},
    "taylor_ce": {},
    "z_loss": {"coef": 1e-4},
    "spectral_decoupling": {"lam": REQUIRED},
    "logit_clip": {"tau": REQUIRED, "p": 2},
    "bce": {"pos_weight": None},
    "sigmoid_focal": {"gamma": 2.0, "alpha": 0.25},
    "asymmetric": {},
    "dice": {"smooth": 1.0, "alpha": 0.0},
    "tversky": {"alpha": REQUIRED, "beta": REQUIRED},
    "anyloss": {"metric": "f1", "amplifier": 73.0, "beta": 1.0},
    "mse": {},
    "mae_regression": {},
    "l1": {},
    "huber": {"delta": 1.0},
    "pseudo_huber": {"delta": 1.0},
    "log_cosh": {},
    "quantile": {"q": 0.5},
    "cauchy": {"c": 1.0},
    "gaussian_nll": {},
    "hl_gauss": {"min_value": REQUIRED, "max_value": REQUIRED, "num_bins": REQUIRED, "sigma": REQUIRED},
    "ordinal_wasserstein": {},
    "kd": {"temperature": 4.0},
    "pld": {},
    "info_nce": {"temperature": 0.1},
    "supcon": {"temperature": 0.1},
    "circle": {"m": 0.25, "gamma": 256},
    "multi_similarity": {"alpha": 2.0, "beta": 50.0, "base": 0.5},
    "triplet": {"margin": 0.2},
}

# values for the arguments the issue names without a default
VALUES = {
    "tau": 1.5,
    "margin": 1.0,
    "a": 1.0,
    "b": 2.0,
    "lam": 0.1,
    "alpha": 0.3,
    "beta": 0.7,
    "min_value": -1.0,
    "max_value": 1.0,
    "num_bins": 8,
    "sigma": 0.2,
}


@pytest.mark.parametrize("name", list(CATALOG))
def test_issue_names_arguments_and_defaults(name):
    cls = LOSSES.get(name)
    params = inspect.signature(cls).parameters
    kwargs = {}
    for arg, default in CATALOG[name].items():
        assert arg in params, f"`{name}` has no argument `{arg}`; it has {list(params)}"
        if default is REQUIRED:
            kwargs[arg] = VALUES[arg] if name != "logit_clip" else 0.5
        else:
            assert params[arg].default == default, f"`{name}({arg}=...)` defaults to {params[arg].default!r}"
            kwargs[arg] = default
    loss = ll.build_loss(name, **kwargs)
    assert isinstance(loss, ll.Loss)
    for arg, value in kwargs.items():  # the module keeps what it was given (tensors for per-class weights)
        kept = getattr(loss, arg, value)
        if isinstance(kept, torch.Tensor) or value is None:
            continue
        assert kept == pytest.approx(value) if isinstance(value, float) else kept == value, (name, arg, kept)
