"""Independent per-sample references for the multi-class losses: plain Python loops over one row with ``math``.

Each ``ref_*(row, y, **kwargs) -> float`` takes one logit row (a list of floats) and its integer label.
"""

from __future__ import annotations

import math


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [x / s for x in e]


def softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def ce(row, y):
    return -math.log(softmax(row)[y])


def ref_cross_entropy(row, y, label_smoothing=0.0):
    # PyTorch's smoothing: eps / C to every class, the label included
    p, c = softmax(row), len(row)
    return -sum(((1 - label_smoothing) * (k == y) + label_smoothing / c) * math.log(p[k]) for k in range(c))


def ref_focal(row, y, gamma=2.0, alpha=None):
    # the paper's softmax form -alpha_y (1 - p_y)^gamma log p_y (alpha: None, a scalar or per-class weights)
    p = softmax(row)[y]
    a = 1.0 if alpha is None else alpha if isinstance(alpha, float) else alpha[y]
    return -a * (1 - p) ** gamma * math.log(p)


def ref_gce(row, y, q=0.7):
    return (1 - softmax(row)[y] ** q) / q


def ref_mae(row, y):
    return 1 - softmax(row)[y]


def ref_rce(row, y, A=-4.0):
    # -sum_k p_k log q_k with the one-hot's log 0 replaced by A
    p = softmax(row)
    return -sum(p[k] * (0.0 if k == y else A) for k in range(len(row)))


def ref_sce(row, y, alpha=0.1, beta=1.0, A=-4.0):
    return alpha * ce(row, y) + beta * ref_rce(row, y, A)


def ref_nce(row, y):
    p = softmax(row)
    return math.log(p[y]) / sum(math.log(v) for v in p)


def ref_nfl(row, y, gamma=0.5):
    p = softmax(row)
    fl = [-((1 - v) ** gamma) * math.log(v) for v in p]
    return fl[y] / sum(fl)


def ref_apl(row, y, active="nce", passive="rce", alpha=1.0, beta=1.0, gamma=0.5, A=-4.0):
    act = ref_nce(row, y) if active == "nce" else ref_nfl(row, y, gamma)
    pas = ref_rce(row, y, A) if passive == "rce" else ref_mae(row, y)
    return alpha * act + beta * pas


def ref_poly1(row, y, epsilon=1.0, label_smoothing=0.0):
    p, c = softmax(row), len(row)
    q = [(1 - label_smoothing) * (k == y) + label_smoothing / c for k in range(c)]
    return -sum(qk * math.log(pk) for qk, pk in zip(q, p)) + epsilon * (1 - sum(qk * pk for qk, pk in zip(q, p)))


def ref_poly_focal(row, y, epsilon=1.0, gamma=2.0):
    p = softmax(row)[y]
    return -((1 - p) ** gamma) * math.log(p) + epsilon * (1 - p) ** (gamma + 1)


def ref_comp_sum(row, y, tau):
    # the paper's definition through u = sum_{y' != y} exp(h_y' - h_y)
    u = sum(math.exp(row[k] - row[y]) for k in range(len(row)) if k != y)
    if tau == 1:
        return math.log1p(u)
    return ((1 + u) ** (1 - tau) - 1) / (1 - tau)


def ref_taylor_ce(row, y, order=2):
    p = softmax(row)[y]
    return sum((1 - p) ** j / j for j in range(1, order + 1))


def ref_squentropy(row, y):
    c = len(row)
    return ce(row, y) + sum(row[j] ** 2 for j in range(c) if j != y) / (c - 1)


def ref_ovr(row, y):
    return sum(softplus(-row[c] if c == y else row[c]) for c in range(len(row)))


def ref_ldr_kl(row, y, lam=1.0, margin=2.0, normalize=True):
    # the reference code's recipe: (softplus / mean) scores, lam * log(mean_k exp((c 1[k != y] + f_k - f_y) / lam))
    f = list(row)
    if normalize:
        f = [softplus(v) for v in f]
        mean = sum(f) / len(f)
        f = [v / mean for v in f]
    terms = [math.exp((margin * (k != y) + f[k] - f[y]) / lam) for k in range(len(f))]
    return lam * math.log(sum(terms) / len(terms))


def ref_stablemax_cross_entropy(row, y):
    s = [x + 1 if x >= 0 else 1 / (1 - x) for x in row]
    return -math.log(s[y] / sum(s))


def ref_spherical_z_loss(row, y, a, b, eps=1e-6):
    # population standard deviation; our eps (documented) is added to the variance
    d = len(row)
    mu = sum(row) / d
    sigma = math.sqrt(sum(v * v for v in row) / d - mu * mu + eps)
    return softplus(a * (b - (row[y] - mu) / sigma)) / a


def ref_z_loss(row, coef=1e-4):
    m = max(row)
    return coef * (m + math.log(sum(math.exp(v - m) for v in row))) ** 2


def ref_spectral_decoupling(row, lam, gamma=0.0):
    return lam / 2 * sum((v - gamma) ** 2 for v in row)


def ref_logit_clip(row, y, tau=1.0, p=2.0, base=ce):
    norm = max(abs(v) for v in row) if p == math.inf else sum(abs(v) ** p for v in row) ** (1 / p)
    scale = min(1.0, (1 / tau) / norm) if norm > 0 else 1.0
    return base([v * scale for v in row], y)
