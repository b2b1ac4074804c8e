"""KD and Plackett-Luce distillation against explicit references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.errors import ConfigurationError
from lightning_losses.objective import Objective


def _data(n=6, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    teacher = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, c, (n,), generator=g)
    return logits, teacher, target


def _log_softmax_np(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------- KD


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
@pytest.mark.parametrize("ce_weight", [0.0, 0.3, 1.0])
def test_kd_parity(temperature, ce_weight):
    logits, teacher, target = _data()
    module = ll.build_loss("kd", temperature=temperature, ce_weight=ce_weight)
    out = module(logits=logits, teacher_logits=teacher, target=target)
    assert out.shape == (6,) and type(module).family == "distillation"
    z, t = logits.detach().numpy(), teacher.numpy()
    log_s, log_t = _log_softmax_np(z / temperature), _log_softmax_np(t / temperature)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(axis=1) * temperature**2
    ce = -_log_softmax_np(z)[np.arange(6), target.numpy()]
    np.testing.assert_allclose(out.detach().numpy(), (1 - ce_weight) * kl + ce_weight * ce, rtol=1e-10)
    # the peer formulation: F.kl_div on tempered log-probs, F.cross_entropy
    peer = F.kl_div(
        torch.log_softmax(logits / temperature, 1), torch.softmax(teacher / temperature, 1), reduction="none"
    ).sum(1)
    peer = (1 - ce_weight) * peer * temperature**2 + ce_weight * F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(out, peer)
    torch.testing.assert_close(LF.kd(logits, teacher, target, temperature=temperature, ce_weight=ce_weight), out)
    assert torch.autograd.gradcheck(lambda z: module(logits=z, teacher_logits=teacher, target=target), (logits,))


def test_kd_teacher_gets_no_gradient_and_equal_logits_give_zero():
    logits, teacher, _ = _data()
    teacher = teacher.clone().requires_grad_(True)
    out = LF.kd(logits, teacher)
    out.sum().backward()
    assert teacher.grad is None and logits.grad is not None
    torch.testing.assert_close(LF.kd(teacher.detach(), teacher), torch.zeros(6, dtype=torch.float64))


def test_kd_ignore_index_drops_only_the_ce_part():
    logits, teacher, target = _data()
    target[0] = -100
    out = LF.kd(logits, teacher, target, ce_weight=0.5)
    torch.testing.assert_close(out[0], 0.5 * LF.kd(logits, teacher)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", ["kd", "pld"])
def test_extreme_logits_finite(name, dtype):
    big = {torch.float16: 6e4, torch.bfloat16: 1e30, torch.float32: 1e4}[dtype]
    logits = torch.tensor([[big, -big, 0.0], [-big, big, 1.0]], dtype=dtype, requires_grad=True)
    teacher = torch.tensor([[-big, big, 0.0], [-big, -big, big]], dtype=dtype)
    target = torch.tensor([0, 2])
    kwargs = {"ce_weight": 0.5} if name == "kd" else {}
    out = ll.build_loss(name, **kwargs)(logits=logits, teacher_logits=teacher, target=target)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(logits.grad[1:]).all()  # row 0 is NaN through the backward of the NaN teacher row


def test_teacher_with_zero_probabilities():
    logits = torch.zeros(1, 3, requires_grad=True)
    teacher = torch.tensor([[0.0, float("-inf"), 0.0]])  # a masked class: 0 log 0 = 0
    out = LF.kd(logits, teacher, temperature=1.0)
    out.backward()
    assert out.item() == pytest.approx(np.log(3) - np.log(2)) and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------------------------- PLD


def _pld_reference(z, t, y, temperature):
    """Explicit loop: ranking = true label, then the others by decreasing teacher logit (ties by index)."""
    out = []
    for zi, ti, yi in zip(z, t, y):
        others = sorted((c for c in range(len(zi)) if c != yi), key=lambda c: (-ti[c], c))
        ranking = [yi, *others]
        w = np.exp(ti / temperature - (ti / temperature).max())
        w = w / w.sum()
        total = 0.0
        for k, c in enumerate(ranking):
            rest = np.array([zi[j] for j in ranking[k:]])
            total += w[c] * (np.log(np.exp(rest - rest.max()).sum()) + rest.max() - zi[c])
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_pld_parity(temperature):
    logits, teacher, target = _data(n=7, c=6, seed=1)
    teacher[0, 1:3] = 0.5  # a tie: broken by class index
    module = ll.build_loss("pld", temperature=temperature)
    out = module(logits=logits, teacher_logits=teacher, target=target)
    assert out.shape == (7,) and type(module).family == "distillation"
    ref = _pld_reference(logits.detach().numpy(), teacher.numpy(), target.numpy(), temperature)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10)
    torch.testing.assert_close(LF.pld(logits, teacher, target, temperature=temperature), out)
    assert torch.autograd.gradcheck(lambda z: module(logits=z, teacher_logits=teacher, target=target), (logits,))


def test_pld_properties():
    logits, teacher, target = _data(seed=2)
    base = LF.pld(logits, teacher, target)
    torch.testing.assert_close(LF.pld(logits + 7.5, teacher, target), base)  # translation invariant
    # a teacher sure of the true label: only the first choice counts, i.e. cross entropy
    sure = torch.full_like(teacher, -1e3).scatter(1, target.unsqueeze(1), 1e3)
    torch.testing.assert_close(LF.pld(logits, sure, target), F.cross_entropy(logits, target, reduction="none"))
    # first ranking step = teacher weight of the true label times CE; the rest is non-negative
    w_y = torch.softmax(teacher, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    assert (base >= w_y * F.cross_entropy(logits, target, reduction="none") - 1e-12).all()


def test_objective_with_distillation_inputs():
    logits, teacher, target = _data()
    out = Objective({"pld": {}, "kd": {"temperature": 2.0, "coefficient": 0.5}})(
        {"logits": logits, "teacher_logits": teacher, "target": target}
    )
    expected = (LF.pld(logits, teacher, target) + 0.5 * LF.kd(logits, teacher, temperature=2.0)).mean()
    torch.testing.assert_close(out.loss, expected)


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("kd", {"temperature": 0.0}, r"`temperature` must be > 0.0, got 0.0"),
        ("kd", {"temperature": float("inf")}, r"`temperature` must be a finite number > 0.0, got inf"),
        ("kd", {"ce_weight": 1.5}, r"`ce_weight` must be in \[0.0, 1.0\], got 1.5"),
        ("kd", {"ignore_index": 1.5}, r"`ignore_index` must be an integer"),
        ("kd", {"alpha": 0.5}, r"unexpected argument `alpha`"),
        ("pld", {"temperature": -1.0}, r"`temperature` must be > 0.0, got -1.0"),
    ],
)
def test_constructor_validation(name, kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        ll.build_loss(name, **kwargs)


def test_input_validation():
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"`teacher_logits` must be a floating tensor with the shape of `logits`"):
        LF.kd(logits, torch.zeros(3, 5))
    with pytest.raises(TypeError, match=r"`teacher_logits` must be a torch.Tensor, got list"):
        LF.pld(logits, [[0.0] * 4] * 3, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`logits` must be a floating tensor of shape \[N, C\]"):
        LF.kd(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"`kd` with `ce_weight` > 0 needs integer labels `target \[N\]`"):
        LF.kd(logits, logits, ce_weight=0.5)
    with pytest.raises(ValueError, match=r"`pld` takes integer labels"):
        LF.pld(logits, logits, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"`target` labels must be in \[0, 3\]"):
        LF.pld(logits, logits, torch.tensor([0, 4, 1]))


def test_kd_non_finite_teacher_row_is_nan_and_zero_mass_stays_finite():
    from lightning_losses.functional import kd

    logits = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor(
        [[float("nan")] * 3, [0.1, 0.2, 0.3], [0.0, float("-inf"), 1.0]], dtype=torch.float64
    )  # row 0 NaN, row 2 puts no mass on class 1 (0 log 0 = 0)
    value = kd(logits, teacher, temperature=2.0)
    assert torch.isnan(value[0]) and torch.isfinite(value[1:]).all()
    value[1:].sum().backward()
    assert torch.isfinite(logits.grad[1:]).all()  # row 0 is NaN through the backward of the NaN teacher row
