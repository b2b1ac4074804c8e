"""Issue 20 loss terms against explicit float64 loops: pairwise AUC, VNE, self-distillation, dual-head KD; the
global-batch ones (AUC pairs, VNE autocorrelation) in 2-process DDP against one process on the concatenated batch."""

import math

import numpy as np
import pytest
import torch

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.distributed import rank
from lightning_losses.objective import Objective


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _auc_reference(scores, labels, surrogate="logistic", margin=1.0):
    """Per-sample means over the opposite class, by explicit loops (binary)."""
    pos = [i for i, y in enumerate(labels) if y > 0.5]
    neg = [i for i, y in enumerate(labels) if y <= 0.5]

    def f(gap):
        return _softplus(-gap) if surrogate == "logistic" else max(0.0, margin - gap) ** 2

    out = []
    for i, y in enumerate(labels):
        partners = neg if y > 0.5 else pos
        terms = [f(scores[i] - scores[j]) if y > 0.5 else f(scores[j] - scores[i]) for j in partners]
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return out


@pytest.mark.parametrize("surrogate", ["logistic", "squared_hinge"])
def test_auc_pairwise_explicit_and_mean_is_the_pairwise_loss(surrogate):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(11, generator=g, dtype=torch.float64) * 2
    y = torch.tensor([1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.float64)
    out = ll.build_loss("auc_pairwise", surrogate=surrogate, margin=0.7)(logits=s, target=y)
    ref = _auc_reference(s.tolist(), y.tolist(), surrogate, 0.7)
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    pos, neg = s[y > 0.5], s[y <= 0.5]
    gap = pos[:, None] - neg[None, :]
    pair = torch.nn.functional.softplus(-gap) if surrogate == "logistic" else torch.relu(0.7 - gap) ** 2
    torch.testing.assert_close(out.mean(), pair.mean())  # the objective's mean = the Mann-Whitney surrogate


def test_auc_pairwise_multilabel_and_no_partner():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.float64)
    out = LF.auc_pairwise(s, y)
    per_label = [LF.auc_pairwise(s[:, k], y[:, k]) for k in range(3)]
    torch.testing.assert_close(out, torch.stack(per_label, -1).mean(-1))
    assert torch.equal(per_label[1], torch.zeros(6, dtype=torch.float64))  # no positive: no pair, 0


def test_vne_matches_eigenvalues_of_the_explicit_autocorrelation():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 4, generator=g, dtype=torch.float64)
    rows = [r / np.linalg.norm(r) for r in z.numpy()]
    c = sum(np.outer(r, r) for r in rows) / len(rows)
    lam = np.linalg.eigvalsh(c)
    expected = -sum(v * math.log(v) for v in lam if v > 0)
    assert math.isclose(float(LF.von_neumann_entropy(z)), expected, rel_tol=1e-12)
    # the authors' route: squared singular values of Z / sqrt(N)
    sv = torch.linalg.svdvals(torch.nn.functional.normalize(z, dim=-1) / math.sqrt(9)) ** 2
    assert math.isclose(float(-(sv * sv.log()).sum()), expected, rel_tol=1e-10)
    assert float(ll.build_loss("vne")(embeddings=z)) == pytest.approx(-expected, rel=1e-12)


def test_vne_gradient_raises_the_entropy():
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(16, 5, generator=g, dtype=torch.float64) * torch.tensor([5.0, 1, 0.2, 0.1, 0.1])).requires_grad_()
    before = float(LF.von_neumann_entropy(z.detach()))
    (grad,) = torch.autograd.grad(LF.vne(z), z)
    after = float(LF.von_neumann_entropy(z.detach() - 0.05 * grad))
    assert after > before
    assert torch.autograd.gradcheck(lambda x: LF.vne(x), (z[:6, :3].detach().clone().requires_grad_(),))


def test_self_distillation_explicit():
    g = torch.Generator().manual_seed(4)
    z, t = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, -100, 2])
    for xi, hard in ((1.5, False), (0.3, True), (0.0, False)):
        out = ll.build_loss("self_distillation", xi=xi, hard=hard)(logits=z, teacher_logits=t, target=y)
        for i in range(5):
            logp = torch.log_softmax(z[i], -1).tolist()
            q = torch.softmax(t[i], -1).tolist()
            if hard:
                q = [1.0 if k == int(t[i].argmax()) else 0.0 for k in range(4)]
            teacher = -sum(qk * lk for qk, lk in zip(q, logp))
            label = 0.0 if int(y[i]) == -100 else -logp[int(y[i])]
            assert math.isclose(float(out[i]), xi * teacher + (1 - xi) * label, rel_tol=1e-12, abs_tol=1e-12)
    torch.testing.assert_close(LF.self_distillation(z, t, y, xi=0.0), LF.cross_entropy(z, y))


def test_binary_kl_norm_and_dual_head_kd_explicit():
    g = torch.Generator().manual_seed(5)
    z, a, t = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    y = torch.tensor([0, 2, 1, 1])
    temp = 2.0

    def coin_kl(d):  # KL(Bernoulli(1/2) || Bernoulli(d)), the authors' KLDivLoss form
        return 0.5 * (math.log(0.5) - math.log(d)) + 0.5 * (math.log(0.5) - math.log(1 - d))

    bkl = [
        temp**2 * sum(coin_kl(1 / (1 + math.exp(-(a[i, c] - t[i, c]).item() / temp))) for c in range(3))
        for i in range(4)
    ]
    torch.testing.assert_close(
        ll.build_loss("binary_kl_norm")(logits=a, teacher_logits=t), torch.tensor(bkl, dtype=torch.float64)
    )
    out = ll.build_loss("dual_head_kd", kd_weight=0.5)(logits=z, aux_logits=a, teacher_logits=t, target=y)
    ce = LF.cross_entropy(z, y)
    torch.testing.assert_close(out, ce + 0.5 * torch.tensor(bkl, dtype=torch.float64))
    assert torch.equal(LF.binary_kl_norm(t, t), torch.zeros(4, dtype=torch.float64))
    # the recipe form: cross entropy on the main head + binary_kl_norm on the auxiliary head
    obj = Objective(
        {
            "ce": {"loss": "cross_entropy"},
            "aux": {"loss": "binary_kl_norm", "coefficient": 0.5, "inputs": {"logits": "aux_logits"}},
        }
    )
    value = obj({"logits": z, "aux_logits": a, "teacher_logits": t, "target": y}).value
    torch.testing.assert_close(value, out.mean())


def test_dual_head_gradients_stay_in_their_heads():
    """CE reaches only the main head and the logit-level loss only the auxiliary head; both reach the backbone."""
    torch.manual_seed(0)
    backbone, main, aux = torch.nn.Linear(5, 4), torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, t, y = torch.randn(6, 5), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    h = backbone(x)
    loss = LF.dual_head_kd(main(h), aux(h), t, y).mean()
    ce_only = torch.autograd.grad(LF.cross_entropy(main(h), y).mean(), aux.weight, allow_unused=True)[0]
    loss.backward()
    assert ce_only is None and aux.weight.grad.abs().sum() > 0 and backbone.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- DDP


def _global_rank(parts, name, kwargs):
    x, y = (p[rank()] for p in parts)
    x = x.clone().requires_grad_(True)
    loss = ll.build_loss(name, **kwargs)
    out = loss(embeddings=x) if name == "vne" else loss(logits=x, target=y)
    total = out if out.ndim == 0 else out.sum()
    total.backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("name", ["auc_pairwise", "vne"])
def test_global_batch_terms_under_ddp_equal_one_process(ddp, name):
    g = torch.Generator().manual_seed(6)
    sizes = (3, 5)
    if name == "vne":
        x = torch.randn(8, 4, generator=g, dtype=torch.float64)
        y = torch.zeros(8)
    else:
        x = torch.randn(8, generator=g, dtype=torch.float64)
        y = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0], dtype=torch.float64)
    parts = [[t[: sizes[0]], t[sizes[0] :]] for t in (x, y)]
    results = ddp.run(_global_rank, parts, name, {})
    one = x.clone().requires_grad_(True)
    loss = ll.build_loss(name)
    if name == "vne":
        expected = loss(embeddings=one)
        expected.backward()
        # every rank gets the global entropy; each rank's gradient is k times its share (DDP averages over k ranks)
        for out, _ in results:
            torch.testing.assert_close(out, expected.detach())
        torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]) / 2, one.grad)
    else:
        expected = loss(logits=one, target=y)
        expected.sum().backward()
        torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), expected.detach())
        torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), one.grad)


# ------------------------------------------------------------------------------------------- errors


def test_errors():
    with pytest.raises(
        ll.ConfigurationError, match=r"`surrogate` must be one of `logistic`, `squared_hinge`, got 'hinge'"
    ):
        ll.build_loss("auc_pairwise", surrogate="hinge")
    with pytest.raises(ll.ConfigurationError, match=r"`margin` must be > 0.0, got 0"):
        ll.build_loss("auc_pairwise", margin=0)
    with pytest.raises(ll.ConfigurationError, match=r"`xi` must be a finite number, got inf"):
        ll.build_loss("self_distillation", xi=float("inf"))
    with pytest.raises(ll.ConfigurationError, match=r"`kd_weight` must be >= 0.0, got -1"):
        ll.build_loss("dual_head_kd", kd_weight=-1)
    with pytest.raises(ll.ConfigurationError, match=r"`sync` must be a bool \(True or False\), got 1"):
        ll.build_loss("vne", sync=1)
    with pytest.raises(ValueError, match=r"`embeddings` must be a floating tensor of shape \[N, D\]"):
        LF.vne(torch.zeros(3))
    with pytest.raises(ValueError, match=r"`teacher_logits` must be a floating tensor with the shape of `logits`"):
        LF.binary_kl_norm(torch.zeros(2, 3), torch.zeros(2, 4))


def test_em_ft_is_the_mean_entropy_of_the_generated_tokens():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    tokens = torch.tensor([[-100, -100, 1, 2, 3], [-100, 4, 0, -100, -100], [5, 5, 5, 5, 5]])
    out = ll.build_loss("em_ft")(logits=logits, target=tokens)
    for i in range(3):
        ents = []
        for t in range(5):
            if int(tokens[i, t]) == -100:
                continue
            p = torch.softmax(logits[i, t], -1).tolist()
            ents.append(-sum(q * math.log(q) for q in p))
        assert math.isclose(float(out[i]), sum(ents) / len(ents), rel_tol=1e-12)


def _ens_reference(scores, labels, draws, lam=0.0):
    """The authors' algorithm step by step on plain lists (one process)."""
    s = [(2 * y - 1) * z for z, y in zip(scores, labels)]
    inv = [math.exp(e) if lam == 0 else max(1 + lam * e, 0.0) ** (1 / lam) for e in draws]
    g_sorted = sorted(max(-v, -1.0) for v in inv)
    order = sorted(range(len(s)), key=lambda i: s[i])
    g = [0.0] * len(s)
    for k, i in enumerate(order):
        g[i] = g_sorted[k]
    g = [(gi / si if si > 1 else gi) - 1e-6 for gi, si in zip(g, s)]
    return [gi * si for gi, si in zip(g, s)], g


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_ens_loss_follows_the_authors_algorithm(lam):
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(10, generator=gen, dtype=torch.float64) * 2
    y = (torch.rand(10, generator=gen) > 0.5).double()
    draws = torch.randn(10, generator=torch.Generator().manual_seed(3), dtype=torch.float64).tolist()
    out = LF.ens_loss(z.requires_grad_(), y, lam=lam, generator=torch.Generator().manual_seed(3))
    values, g = _ens_reference(z.tolist(), y.tolist(), draws, lam)
    torch.testing.assert_close(out, torch.tensor(values, dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.sum(), z)  # d(g_i s_i)/dz_i = g_i (2 y_i - 1): g is not differentiated
    torch.testing.assert_close(grad, torch.tensor(g, dtype=torch.float64) * (2 * y - 1))


def test_ens_loss_module_draws_a_new_loss_per_call_and_resumes():
    loss = ll.build_loss("ens_loss", seed=4)
    z, y = torch.tensor([0.3, -2.0, 1.5, 0.1]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    first, second = loss(logits=z, target=y), loss(logits=z, target=y)
    assert not torch.equal(first, second)
    state = loss.state_dict()
    third = loss(logits=z, target=y)
    resumed = ll.build_loss("ens_loss", seed=4)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(logits=z, target=y), third)


def _ens_rank(parts):
    z, y = (p[rank()] for p in parts)
    z = z.clone().requires_grad_(True)
    out = LF.ens_loss(z, y, generator=torch.Generator().manual_seed(11))
    out.sum().backward()
    return out.detach(), z.grad


def test_ens_loss_sorts_the_global_batch_under_ddp(ddp):
    g = torch.Generator().manual_seed(9)
    z = torch.randn(9, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0], dtype=torch.float64)
    results = ddp.run(_ens_rank, [[t[:4], t[4:]] for t in (z, y)])
    one = z.clone().requires_grad_(True)
    expected = LF.ens_loss(one, y, generator=torch.Generator().manual_seed(11))
    expected.sum().backward()
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), expected.detach())
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), one.grad)


def test_ens_loss_errors():
    with pytest.raises(ll.ConfigurationError, match=r"`seed` must be an integer >= 0, got -1"):
        ll.build_loss("ens_loss", seed=-1)
    with pytest.raises(ValueError, match=r"`ens_loss` takes binary `logits \[N\]`, got shape \[2, 3\]"):
        LF.ens_loss(torch.zeros(2, 3), torch.zeros(2, 3))
