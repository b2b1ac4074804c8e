r"""Metric-learning losses: explicit loop references, pytorch-metric-learning parity, gradients, precision,
validation, and DDP == one process on the concatenated batch.

Why no extra scaling is needed under DDP (what ``test_ddp_equals_one_process`` checks). Rank ``r`` holds anchors
``A_r`` and computes :math:`\ell_i(e_i, R)` for ``i in A_r`` against the gathered references ``R``. The Objective
backpropagates :math:`L_r = k \sum_{i\in A_r} w_i\ell_i / W` (``W`` the global weight sum). The gradient reaching
rank ``r``'s embeddings is the anchor path of :math:`L_r` plus, through the gather's backward (sum over ranks, own
slice), :math:`\sum_s \partial L_s/\partial R_r`, i.e. :math:`\frac{k}{W}\sum_{\text{all } i} w_i\,\partial\ell_i/
\partial e_r` = ``k`` times the one-process gradient. DDP averages over ``k`` ranks: exactly one process.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

import lightning_losses as ll
from lightning_losses.distributed import rank
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import metric_learning as MF

NAMES = ("info_nce", "supcon", "triplet", "multi_similarity", "circle")


def _data(n=10, d=4, classes=4, seed=0, dtype=torch.float64):
    """Random embeddings; labels with every class at least twice when ``n >= 2 * classes``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    t = (torch.arange(n) % classes)[torch.randperm(n, generator=g)]
    return x, t


# ---------------------------------------------------------------- explicit loop references (float64)


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _euc(a, b):
    return float((a / a.norm() - b / b.norm()).norm())


def _pairs(x, t, rx=None, rt=None):
    """Yield (i, positives, negatives) as lists of reference indices, with the references."""
    own = rx is None
    rx = x if own else rx
    rt = t if rt is None else rt
    for i in range(len(x)):
        pos = [j for j in range(len(rx)) if rt[j] == t[i] and not (own and j == i)]
        neg = [j for j in range(len(rx)) if rt[j] != t[i]]
        yield i, pos, neg, rx


def loop_info_nce(x, t, rx=None, rt=None, temperature=0.1):
    out = []
    for i, pos, neg, r in _pairs(x, t, rx, rt):
        if not pos or not neg:
            out.append(0.0)
            continue
        terms = []
        for p in pos:
            num = math.exp(_cos(x[i], r[p]) / temperature)
            den = num + sum(math.exp(_cos(x[i], r[n]) / temperature) for n in neg)
            terms.append(-math.log(num / den))
        out.append(sum(terms) / len(terms))
    return torch.tensor(out, dtype=torch.float64)


def loop_supcon(x, t, rx=None, rt=None, temperature=0.1):
    out = []
    for i, pos, neg, r in _pairs(x, t, rx, rt):
        if not pos:
            out.append(0.0)
            continue
        den = sum(math.exp(_cos(x[i], r[a]) / temperature) for a in pos + neg)
        out.append(-sum(math.log(math.exp(_cos(x[i], r[p]) / temperature) / den) for p in pos) / len(pos))
    return torch.tensor(out, dtype=torch.float64)


def loop_triplet(x, t, rx=None, rt=None, margin=0.2, mining="batch_all"):
    out = []
    for i, pos, neg, r in _pairs(x, t, rx, rt):
        if not pos or not neg:
            out.append(0.0)
        elif mining == "batch_hard":
            dp = max(_euc(x[i], r[p]) for p in pos)
            dn = min(_euc(x[i], r[n]) for n in neg)
            out.append(max(dp - dn + margin, 0.0))
        else:
            vals = [max(_euc(x[i], r[p]) - _euc(x[i], r[n]) + margin, 0.0) for p in pos for n in neg]
            out.append(sum(vals) / len(vals))
    return torch.tensor(out, dtype=torch.float64)


def loop_multi_similarity(x, t, rx=None, rt=None, alpha=2.0, beta=50.0, base=0.5):
    out = []
    for i, pos, neg, r in _pairs(x, t, rx, rt):
        if not pos:
            out.append(0.0)
            continue
        lp = math.log(1 + sum(math.exp(-alpha * (_cos(x[i], r[p]) - base)) for p in pos)) / alpha
        ln = math.log(1 + sum(math.exp(beta * (_cos(x[i], r[n]) - base)) for n in neg)) / beta
        out.append(lp + ln)
    return torch.tensor(out, dtype=torch.float64)


def loop_circle(x, t, rx=None, rt=None, m=0.25, gamma=256.0):
    """Differentiable loop (torch scalars) with the paper's detached weights: its autograd is the reference gradient."""
    own = rx is None
    rx = x if own else rx
    xn, rn = x / x.norm(dim=1, keepdim=True), rx / rx.norm(dim=1, keepdim=True)
    out = []
    for i, pos, neg, _ in _pairs(x, t, rx if not own else None, rt):
        if not pos or not neg:
            out.append(x.new_zeros(()))
            continue
        sp = torch.stack([xn[i] @ rn[p] for p in pos])
        sn = torch.stack([xn[i] @ rn[n] for n in neg])
        lp = -gamma * torch.relu(1 + m - sp.detach()) * (sp - (1 - m))
        lnn = gamma * torch.relu(sn.detach() + m) * (sn - m)
        out.append(torch.logaddexp(x.new_zeros(()), torch.logsumexp(lp, 0) + torch.logsumexp(lnn, 0)))
    return torch.stack(out)


LOOPS = {
    "info_nce": loop_info_nce,
    "supcon": loop_supcon,
    "triplet": loop_triplet,
    "multi_similarity": loop_multi_similarity,
    "circle": lambda *a, **k: loop_circle(*a, **k).detach(),
}
FUNCS = {
    "info_nce": MF.info_nce,
    "supcon": MF.supcon,
    "triplet": MF.triplet,
    "multi_similarity": MF.multi_similarity,
    "circle": MF.circle,
}
CASES = [
    ("info_nce", {"temperature": 0.1}),
    ("info_nce", {"temperature": 0.5}),
    ("supcon", {"temperature": 0.1}),
    ("supcon", {"temperature": 0.7}),
    ("triplet", {"margin": 0.2}),
    ("triplet", {"margin": 0.5, "mining": "batch_hard"}),
    ("multi_similarity", {}),
    ("multi_similarity", {"alpha": 1.0, "beta": 10.0, "base": 0.2}),
    ("circle", {}),
    ("circle", {"m": 0.4, "gamma": 80.0}),
]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_matches_explicit_loop(name, kwargs):
    x, t = _data(n=11, classes=4, seed=1)
    t[0] = 9  # a singleton: no positive
    got = FUNCS[name](x, t, **kwargs)
    torch.testing.assert_close(got, LOOPS[name](x, t, **kwargs), rtol=1e-9, atol=1e-10)
    # separate references with their own labels (no self pair to exclude)
    rx, rt = _data(n=7, classes=4, seed=2)
    got = FUNCS[name](x, t, ref_embeddings=rx, ref_target=rt, **kwargs)
    torch.testing.assert_close(got, LOOPS[name](x, t, rx, rt, **kwargs), rtol=1e-9, atol=1e-10)


def test_info_nce_paired_views_without_target():
    q, _ = _data(n=6, seed=3)
    k, _ = _data(n=6, seed=4)
    ids = torch.arange(6)
    got = MF.info_nce(q, ref_embeddings=k, temperature=0.2)
    torch.testing.assert_close(got, loop_info_nce(q, ids, k, ids, temperature=0.2))
    # ref_target defaults to target: the same thing spelled with instance ids
    torch.testing.assert_close(MF.info_nce(q, ids, ref_embeddings=k, temperature=0.2), got)
    # CLIP-style closed form: cross entropy of the cosine-logit matrix against the diagonal
    logits = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(k, dim=1).T / 0.2
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, ids, reduction="none"))


def test_normalize_false_uses_dot_product():
    x, t = _data(n=8, classes=3, seed=5)
    got = MF.supcon(x, t, normalize=False, temperature=2.0)
    s = x @ x.T / 2.0
    expected = []
    for i in range(8):
        others = [a for a in range(8) if a != i]
        pos = [p for p in others if t[p] == t[i]]
        lse = torch.logsumexp(s[i, others], 0)
        expected.append(-sum(s[i, p] - lse for p in pos) / len(pos) if pos else torch.tensor(0.0, dtype=x.dtype))
    torch.testing.assert_close(got, torch.stack(expected))


def test_batch_all_triplet_on_duplicates_and_ties():
    # duplicated embeddings: distance 0 (clamped sqrt), ties between negatives and thresholds
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(MF.triplet(x, t, margin=0.3), loop_triplet(x, t, margin=0.3), atol=1e-7, rtol=0)


# ---------------------------------------------------------------- parity with pytorch-metric-learning (float64)


def _pml_per_anchor(loss_dict, n):
    """Per-anchor mean of PML's pair / triplet losses (DoNothingReducer output), 0 for anchors with none."""
    entry = loss_dict["loss"]
    losses, indices = entry["losses"], entry["indices"]
    if entry["reduction_type"] == "element":
        return losses.reshape(n)
    anchors = indices[0]
    total = torch.zeros(n, dtype=losses.dtype).index_add_(0, anchors, losses)
    count = torch.zeros(n, dtype=losses.dtype).index_add_(0, anchors, torch.ones_like(losses))
    return total / count.clamp_min(1)


def _pml(name, kwargs, reducer=None):
    reducer = reducer or pml_reducers.DoNothingReducer()
    if name == "info_nce":
        return pml_losses.NTXentLoss(temperature=kwargs["temperature"], reducer=reducer)
    if name == "supcon":
        return pml_losses.SupConLoss(temperature=kwargs["temperature"], reducer=reducer)
    if name == "triplet":
        return pml_losses.TripletMarginLoss(margin=kwargs["margin"], reducer=reducer)
    if name == "multi_similarity":
        return pml_losses.MultiSimilarityLoss(**kwargs, reducer=reducer)
    return pml_losses.CircleLoss(**kwargs, reducer=reducer)


PML_CASES = [
    ("info_nce", {"temperature": 0.1}),
    ("supcon", {"temperature": 0.1}),
    ("triplet", {"margin": 0.2}),
    ("triplet", {"margin": 0.2, "mining": "batch_hard"}),
    ("multi_similarity", {"alpha": 2.0, "beta": 50.0, "base": 0.5}),
    ("circle", {"m": 0.25, "gamma": 256.0}),
    ("circle", {"m": 0.4, "gamma": 80.0}),
]


@pytest.mark.parametrize(("name", "kwargs"), PML_CASES)
@pytest.mark.parametrize("with_ref", [False, True])
def test_matches_pytorch_metric_learning_per_anchor(name, kwargs, with_ref):
    x, t = _data(n=12, classes=4, seed=6)
    t[0] = 9  # no positive: PML gives 0 too (except multi_similarity, which keeps the negative term)
    ref = _data(n=9, classes=4, seed=7) if with_ref else (None, None)
    mining = kwargs.get("mining", "batch_all")
    pml_kwargs = {k: v for k, v in kwargs.items() if k != "mining"}
    pml = _pml(name, pml_kwargs)
    pml_ref = {"ref_emb": ref[0], "ref_labels": ref[1]} if with_ref else {}
    indices = None
    if mining == "batch_hard":
        indices = pml_miners.BatchHardMiner()(x, t, *ref) if with_ref else pml_miners.BatchHardMiner()(x, t)
    expected = _pml_per_anchor(pml(x, t, indices, **pml_ref), len(x))
    got = FUNCS[name](x, t, ref_embeddings=ref[0], ref_target=ref[1], **kwargs)
    valid = MF.valid_anchors(x, t, ref_embeddings=ref[0], ref_target=ref[1])
    assert not valid[0] and valid[1:].all()
    torch.testing.assert_close(got[valid], expected[valid], rtol=1e-7, atol=1e-9)
    assert got[0] == 0


def test_reduced_values_match_pml_where_the_reducers_agree():
    x, t = _data(n=12, classes=3, seed=8)
    t[:2] = torch.tensor([7, 8])  # two anchors without positives
    # SupCon / Circle: PML's AvgNonZeroReducer skips the zero-loss (no positive) anchors, as our mask does
    for name, kw in [("supcon", {"temperature": 0.1}), ("circle", {"m": 0.4, "gamma": 80.0})]:
        out = ll.Objective({name: kw})({"embeddings": x, "target": t})
        torch.testing.assert_close(out.value, _pml(name, kw, pml_reducers.AvgNonZeroReducer())(x, t))
    # NT-Xent: PML means over positive pairs; equal to our anchor mean when every anchor has one positive (SimCLR)
    views = _data(n=8, seed=9)[0]
    ids = torch.arange(4).repeat(2)
    out = ll.Objective({"info_nce": {"temperature": 0.1}})({"embeddings": views, "target": ids})
    torch.testing.assert_close(out.value, pml_losses.NTXentLoss(temperature=0.1)(views, ids))
    # Multi-Similarity: PML's MeanReducer over all anchors; equal when every anchor has a positive
    x, t = _data(n=12, classes=3, seed=10)
    assert MF.valid_anchors(x, t).all()
    out = ll.Objective({"multi_similarity": {}})({"embeddings": x, "target": t})
    torch.testing.assert_close(out.value, pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(x, t))


# ---------------------------------------------------------------- gradients and precision


@pytest.mark.parametrize(("name", "kwargs"), [c for c in CASES if c[0] != "circle"])
def test_gradcheck_float64(name, kwargs):
    x, t = _data(n=7, d=3, classes=3, seed=11)
    rx, rt = _data(n=5, d=3, classes=3, seed=12)
    fn = FUNCS[name]
    assert torch.autograd.gradcheck(lambda a: fn(a, t, **kwargs), (x.clone().requires_grad_(True),))
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, t, ref_embeddings=b, ref_target=rt, **kwargs),
        (x.clone().requires_grad_(True), rx.clone().requires_grad_(True)),
    )


@pytest.mark.parametrize("kwargs", [{}, {"m": 0.4, "gamma": 80.0}])
def test_circle_gradient_matches_paper_gradient(kwargs):
    # Circle's weights alpha are constants in the gradient (paper, PML), so gradcheck against finite differences does
    # not apply; the reference is the autograd of the loop written above with the same detached weights.
    x, t = _data(n=8, d=3, classes=3, seed=13)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    w = torch.rand(8, dtype=torch.float64)
    (MF.circle(a, t, **kwargs) * w).sum().backward()
    (loop_circle(b, t, **kwargs) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_finite_under_autocast_and_half_inputs(name, dtype):
    g = torch.Generator().manual_seed(14)
    inputs = torch.randn(16, 8, generator=g)
    t = torch.randint(0, 3, (16,), generator=g)
    layer = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=dtype):
        emb = layer(inputs)
        assert emb.dtype == dtype
        loss = FUNCS[name](emb, t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(layer.weight.grad).all()
    # large half embeddings: squared norms (8e6) overflow float16 but are computed in float32
    big = (torch.randn(16, 8, generator=g) * 1e3).to(dtype).requires_grad_(True)
    loss = FUNCS[name](big, t)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(big.grad).all()
    if name in ("info_nce", "supcon", "triplet"):  # raw dot products: logits of ~8e3 overflow exp in half
        raw = (torch.randn(16, 8, generator=g) * 10).to(dtype).requires_grad_(True)
        loss = FUNCS[name](raw, t, normalize=False)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(raw.grad).all()
    # close to the float32 result on the same (rounded) inputs
    ref = FUNCS[name](emb.detach().float(), t)
    torch.testing.assert_close(FUNCS[name](emb.detach(), t), ref)


@pytest.mark.parametrize("name", NAMES)
def test_no_nan_gradient_for_masked_anchors(name):
    # all labels distinct: no positives anywhere (every anchor masked), and one class only: no negatives
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for t in (torch.arange(5), torch.zeros(5, dtype=torch.long)):
        loss = FUNCS[name](x, t)
        loss.sum().backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None


# ---------------------------------------------------------------- modules, Objective, validation


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_module_matches_functional_and_masks(name, kwargs):
    x, t = _data(n=9, classes=3, seed=15)
    t[2] = 5
    module = ll.build_loss(name, **kwargs)
    assert module.family == "embedding"
    torch.testing.assert_close(module(embeddings=x, target=t), FUNCS[name](x, t, **kwargs))
    mask = module.sample_mask(embeddings=x, target=t)
    assert mask.tolist() == [i != 2 for i in range(9)]
    out = ll.Objective({name: kwargs})({"embeddings": x, "target": t})
    torch.testing.assert_close(out.value, FUNCS[name](x, t, **kwargs)[mask].mean())


def test_triplet_and_circle_mask_anchors_without_negatives():
    x, _ = _data(n=4, seed=16)
    same = torch.zeros(4, dtype=torch.long)
    assert ll.build_loss("supcon").sample_mask(embeddings=x, target=same).all()
    for name in ("triplet", "circle", "info_nce"):
        assert not ll.build_loss(name).sample_mask(embeddings=x, target=same).any()


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("info_nce", {"temperature": 0.0}, r"`temperature` must be > 0.0, got 0.0"),
        ("supcon", {"temperature": -1}, r"`temperature` must be > 0.0, got -1.0"),
        ("supcon", {"temperature": "hot"}, r"`temperature` must be a finite number > 0.0, got 'hot'"),
        ("triplet", {"margin": -0.1}, r"`margin` must be >= 0.0, got -0.1"),
        ("triplet", {"mining": "hard"}, r"`mining` must be one of `batch_all`, `batch_hard`, got 'hard'"),
        ("multi_similarity", {"alpha": 0}, r"`alpha` must be > 0.0, got 0.0"),
        ("multi_similarity", {"beta": float("inf")}, r"`beta` must be a finite number > 0.0, got inf"),
        ("multi_similarity", {"base": None}, r"`base` must be a finite number, got None"),
        ("circle", {"m": 1.5}, r"`m` must be in \[0.0, 1.0\], got 1.5"),
        ("circle", {"gamma": 0}, r"`gamma` must be > 0.0, got 0.0"),
        ("circle", {"normalize": 1}, r"`normalize` must be a bool \(True or False\), got 1"),
        ("supcon", {"gather": "yes"}, r"`gather` must be a bool \(True or False\), got 'yes'"),
        ("supcon", {"temprature": 0.1}, r"unexpected argument `temprature`; did you mean `temperature`\?"),
    ],
)
def test_constructor_validation(name, kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


X = torch.randn(4, 3)
T = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embeddings": X.tolist(), "target": T}, TypeError, r"`embeddings` must be a torch.Tensor, got list"),
        ({"embeddings": X[0], "target": T}, ValueError, r"`embeddings` must be a floating tensor of shape \[N, D\]"),
        ({"embeddings": T[:, None], "target": T}, ValueError, r"`embeddings` must be a floating tensor .* torch.int64"),
        ({"embeddings": X, "target": T.float()}, ValueError, r"`target` must hold integer labels \(int64\), got"),
        (
            {"embeddings": X, "target": T.bool()},
            ValueError,
            r"`target` must hold integer labels \(int64\), got torch.b",
        ),
        (
            {"embeddings": X, "target": T[:3]},
            ValueError,
            r"`target` must have shape \[4\] to match `embeddings`, got \[3",
        ),
        ({"embeddings": X, "target": None}, ValueError, r"`target` \[N\] integer labels are required"),
        (
            {"embeddings": X, "target": T, "ref_target": T},
            ValueError,
            r"`ref_target` was given without `ref_embeddings`",
        ),
        (
            {"embeddings": X, "target": T, "ref_embeddings": torch.randn(4, 2)},
            ValueError,
            r"`ref_embeddings` must have D = 3 columns like `embeddings`, got \[4, 2\]",
        ),
        (
            {"embeddings": X, "target": T, "ref_embeddings": torch.randn(5, 3)},
            ValueError,
            r"`ref_embeddings` has 5 rows but `embeddings` 4: pass `ref_target` unless the rows are paired",
        ),
        (
            {"embeddings": X, "target": T, "ref_embeddings": torch.randn(5, 3), "ref_target": T},
            ValueError,
            r"`ref_target` must have shape \[5\] to match `ref_embeddings`, got \[4\]",
        ),
    ],
)
def test_input_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        ll.build_loss("supcon")(**kwargs)


def test_info_nce_input_validation_without_target():
    with pytest.raises(ValueError, match=r"without `target`, pass `ref_embeddings` \(paired views"):
        ll.build_loss("info_nce")(embeddings=X)
    with pytest.raises(ValueError, match=r"`ref_target` needs `target` \(labels on both sides\)"):
        ll.build_loss("info_nce")(embeddings=X, ref_embeddings=X, ref_target=T)


# ---------------------------------------------------------------- DDP: k ranks == one process


def _objective_step(name, kwargs, inputs, target, weight, ref=None):
    """One Objective step on ``embeddings = inputs @ weight``: (value, per_sample, mask, grad_emb, grad_weight)."""
    w = weight.clone().requires_grad_(True)
    emb = inputs @ w
    emb.retain_grad()
    tensors = {"embeddings": emb}
    if target is not None:
        tensors["target"] = target
    if ref is not None:
        ref_emb = ref[0] @ w
        tensors["ref_embeddings"] = ref_emb
        if ref[1] is not None:
            tensors["ref_target"] = ref[1]
    out = ll.Objective({name: kwargs})(tensors)
    out.loss.backward()
    return out.value.detach(), out.per_sample.detach(), out.weights, emb.grad, w.grad


def _ddp_step(name, kwargs, inputs, targets, weight, refs=None):
    r = rank()
    ref = None if refs is None else (refs[0][r], None if refs[1] is None else refs[1][r])
    return _objective_step(name, kwargs, inputs[r], None if targets is None else targets[r], weight, ref)


def _rank_batches(seed=20, sizes=(5, 7), classes=4):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(n, 6, generator=g, dtype=torch.float64) for n in sizes]
    targets = [torch.randint(0, classes, (n,), generator=g) for n in sizes]
    targets[0][0], targets[1][0] = 11, 11  # positives only across ranks
    targets[1][1] = 12  # a global singleton: masked everywhere
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64)
    return inputs, targets, weight


DDP_CASES = [
    ("info_nce", {"temperature": 0.1}),
    ("supcon", {"temperature": 0.1}),
    ("triplet", {"margin": 0.2}),
    ("triplet", {"margin": 0.2, "mining": "batch_hard"}),
    ("multi_similarity", {}),
    ("circle", {"m": 0.4, "gamma": 80.0}),
]


def _check_ddp_equals_one_process(results, expected, sizes):
    value, per_sample, weights, grad_emb, grad_w = expected
    starts = [0, sizes[0]]
    for r, (v, ps, wts, ge, _) in enumerate(results):
        rows = slice(starts[r], starts[r] + sizes[r])
        torch.testing.assert_close(v, value)
        torch.testing.assert_close(ps, per_sample[rows])
        torch.testing.assert_close(wts, weights[rows])
        # DDP averages gradients over the k = 2 ranks
        torch.testing.assert_close(ge / 2, grad_emb[rows])
    torch.testing.assert_close((results[0][4] + results[1][4]) / 2, grad_w)


@pytest.mark.parametrize(("name", "kwargs"), DDP_CASES)
def test_ddp_equals_one_process(ddp, name, kwargs):
    inputs, targets, weight = _rank_batches()
    results = ddp.run(_ddp_step, name, kwargs, inputs, targets, weight)
    expected = _objective_step(name, kwargs, torch.cat(inputs), torch.cat(targets), weight)
    assert expected[2][0] == 1 and expected[2][5] == 1  # label 11 found its positive across ranks
    assert expected[2][6] == 0  # the global singleton (label 12)
    _check_ddp_equals_one_process(results, expected, (5, 7))


def test_ddp_paired_views_and_reference_sets(ddp):
    inputs, targets, weight = _rank_batches(seed=21)
    keys = [x + 0.3 * torch.randn_like(x) for x in inputs]
    # paired views without labels: instance ids become global row indices
    results = ddp.run(_ddp_step, "info_nce", {"temperature": 0.2}, inputs, None, weight, (keys, None))
    expected = _objective_step(
        "info_nce", {"temperature": 0.2}, torch.cat(inputs), None, weight, (torch.cat(keys), None)
    )
    _check_ddp_equals_one_process(results, expected, (5, 7))
    # separate reference sets with their own labels (uneven sizes 3 and 6)
    g = torch.Generator().manual_seed(22)
    ref_x = [torch.randn(n, 6, generator=g, dtype=torch.float64) for n in (3, 6)]
    ref_t = [torch.randint(0, 4, (n,), generator=g) for n in (3, 6)]
    refs = (ref_x, ref_t)
    results = ddp.run(_ddp_step, "supcon", {}, inputs, targets, weight, refs)
    expected = _objective_step("supcon", {}, torch.cat(inputs), torch.cat(targets), weight, tuple(map(torch.cat, refs)))
    _check_ddp_equals_one_process(results, expected, (5, 7))


def test_ddp_gather_false_uses_local_references_only(ddp):
    inputs, targets, weight = _rank_batches(seed=23)
    results = ddp.run(_ddp_step, "supcon", {"gather": False}, inputs, targets, weight)
    for r, res in enumerate(results):
        local = _objective_step("supcon", {}, inputs[r], targets[r], weight)
        torch.testing.assert_close(res[1], local[1])  # per-anchor losses against local references
        torch.testing.assert_close(res[2], local[2])  # label 11 has no local positive: masked
    assert results[0][2][0] == 0 and results[1][2][0] == 0
