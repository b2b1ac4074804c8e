"""Reward transforms (wco, uwo, noisy_reward, pf_ppo) against explicit float64 loops; the policy losses' reward path;
the registry, the command line and the recipe; DDP (the global weight normalisation) == 1 process."""

import contextlib
import io
import math

import pytest
import torch
from omegaconf import OmegaConf

import lightning_losses as ll
from lightning_losses import cli
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import reward_transforms as RF
from lightning_losses.objective import Objective

NAMES = ["noisy_reward", "pf_ppo", "uwo", "wco"]


def _rollouts(n=8, t=5, k=3, seed=0, sizes=(3, 1, 4)):
    """A GRPO batch: responses of `len(sizes)` prompts (group ids not sorted), ensemble rewards [N, K], binary ones."""
    g = torch.Generator().manual_seed(seed)
    group = torch.cat([torch.full((s,), 7 - 2 * i) for i, s in enumerate(sizes)])  # ids 7, 5, 3: unsorted
    n = group.numel()
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 2
    logps = (old + 0.2 * torch.randn(n, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    ensemble = torch.randn(n, k, generator=g, dtype=torch.float64)
    binary = (torch.rand(n, generator=g) < 0.5).double()
    return logps, old, mask, group, ensemble, binary


def _group_adv_loop(r, group, normalize_std=True, eps=1e-6):
    """GRPO's group advantages, written out (unbiased std, a group of one: mean 0 and std 1)."""
    out = []
    for i in range(len(r)):
        members = [float(r[j]) for j in range(len(r)) if int(group[j]) == int(group[i])]
        if len(members) < 2:  # mean 0 and std 1
            out.append(float(r[i]) / (1 + eps) if normalize_std else float(r[i]))
            continue
        mean = sum(members) / len(members)
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (len(members) - 1))
        out.append((float(r[i]) - mean) / (std + eps) if normalize_std else float(r[i]) - mean)
    return torch.tensor(out, dtype=torch.float64)


def _pf_loop(r, group, strategy, power=1.0):
    """PF-PPO's weights, written out: rank each prompt's responses by reward (ties: earlier first)."""
    n = len(r)
    w = [0.0] * n
    if strategy == "pow":
        return torch.tensor([abs(float(x)) ** power for x in r], dtype=torch.float64)
    for gid in {int(x) for x in group}:
        idx = [i for i in range(n) if int(group[i]) == gid]
        ranked = sorted(idx, key=lambda i: (-float(r[i]), i))
        if len(ranked) == 1:
            w[ranked[0]] = 1.0
            continue
        if strategy == "best_of_n":
            w[ranked[0]] = 1.0
        elif strategy == "best_worst":
            w[ranked[0]], w[ranked[-1]] = 0.5, 0.5
        else:  # best_random: the best with 1/2, each other with 1/(2(N-1))
            for pos, i in enumerate(ranked):
                w[i] = 0.5 if pos == 0 else 0.5 / (len(ranked) - 1)
    return torch.tensor(w, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- formulas


def test_wco_and_uwo_match_loops():
    _, _, _, _, ens, _ = _rollouts(k=4)
    for i in range(ens.shape[0]):
        row = [float(x) for x in ens[i]]
        mean = sum(row) / len(row)
        var = sum((x - mean) ** 2 for x in row) / len(row)  # intra-ensemble variance, divisor K
        assert float(RF.wco(ens)[i]) == pytest.approx(min(row), abs=1e-12)
        assert float(RF.uwo(ens, coef=0.7)[i]) == pytest.approx(mean - 0.7 * var, abs=1e-12)
    assert RF.uwo(ens, coef=0.0).allclose(ens.mean(-1))  # λ = 0: the ensemble mean
    torch.testing.assert_close(RF.wco(ens[:, :1]), ens[:, 0])  # one member: the reward itself


def test_noisy_reward_corrections_and_their_expectation_over_the_channel():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    fp, fn = 0.15, 0.3
    back = RF.noisy_reward_backward(r, fp, fn)
    fwd = RF.noisy_reward_forward(r, fn)
    for i, x in enumerate(r.tolist()):
        assert float(back[i]) == pytest.approx((x - fp) / (1 - fp - fn), abs=1e-12)
        assert float(fwd[i]) == pytest.approx(fn if x == 1.0 else fn - 1.0, abs=1e-12)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    # expectations over the channel P(r~ = 1 | r* = 1) = 1 - fn, P(r~ = 1 | r* = 0) = fp
    b1, b0 = (
        float(RF.noisy_reward_backward(one, fp, fn)),
        float(RF.noisy_reward_backward(zero, fp, fn)),
    )
    f1, f0 = float(RF.noisy_reward_forward(one, fn)), float(RF.noisy_reward_forward(zero, fn))
    assert (1 - fn) * b1 + fn * b0 == pytest.approx(1.0)  # backward: unbiased for a correct response
    assert fp * b1 + (1 - fp) * b0 == pytest.approx(0.0)  # ... and for a wrong one
    assert (1 - fn) * f1 + fn * f0 == pytest.approx(0.0)  # forward: a correct response weighs 0 in expectation
    assert fp * f1 + (1 - fp) * f0 == pytest.approx(-(1 - fp - fn))  # a wrong one -(1 - fp - fn)
    assert RF.noisy_reward_forward(torch.tensor([1, 0]), fn).dtype == torch.get_default_dtype()  # int rewards


@pytest.mark.parametrize("strategy", ["best_random", "best_worst", "best_of_n", "pow"])
def test_pf_ppo_weights_match_loop(strategy):
    r = torch.tensor([0.2, 0.9, 0.2, -0.5, 0.4, 0.9, 0.9, -1.0, 0.1], dtype=torch.float64)  # ties in group 2
    group = torch.tensor([4, 4, 4, 9, 2, 2, 2, 2, 4])
    expected = _pf_loop(r, group, strategy, power=2.0)
    torch.testing.assert_close(RF.pf_ppo_weights(r, group, strategy=strategy, power=2.0), expected)
    if strategy != "pow":  # each prompt weighs 1 in all: the paper's one-response draw per prompt
        for gid in (4, 9, 2):
            assert float(expected[group == gid].sum()) == pytest.approx(1.0)


def test_group_ranks_ties_keep_input_order():
    rank, size = RF.group_ranks(torch.tensor([0.5, 0.5, 0.1, 0.5]), torch.tensor([1, 1, 1, 0]))
    assert rank.tolist() == [0, 1, 2, 0] and size.tolist() == [3, 3, 3, 1]


def test_normalize_weights_is_mean_one_over_counted():
    w = torch.tensor([0.5, 0.0, 0.25, 1.0, 3.0], dtype=torch.float64)
    counted = torch.tensor([True, True, True, True, False])
    out = RF.normalize_weights(w, counted)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.0, 0.25, 1.0, 0.0], dtype=torch.float64) * 4 / 1.75)
    assert RF.normalize_weights(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]  # nothing to weight: no NaN


# ------------------------------------------------------------------------------------------- policy losses


@pytest.mark.parametrize(
    ("spec", "normalize_std"),
    [
        ("wco", True),
        ({"name": "uwo", "coef": 0.3}, True),
        ({"name": "noisy_reward", "mode": "backward", "fp_rate": 0.1, "fn_rate": 0.2}, False),
        ({"name": "noisy_reward", "fn_rate": 0.2}, True),  # forward (default): the weights are the advantages
    ],
)
def test_grpo_from_rewards_equals_grpo_on_loop_advantages(spec, normalize_std):
    logps, old, mask, group, ens, binary = _rollouts()
    name = spec if isinstance(spec, str) else spec["name"]
    if name in ("wco", "uwo"):
        rewards = ens
        per = [min(map(float, row)) for row in ens] if name == "wco" else None
        if per is None:
            per = []
            for row in ens.tolist():
                m = sum(row) / len(row)
                per.append(m - 0.3 * sum((x - m) ** 2 for x in row) / len(row))
        adv = _group_adv_loop(per, group, normalize_std)
    else:
        rewards = binary
        if spec.get("mode") == "backward":
            adv = _group_adv_loop([(float(x) - 0.1) / 0.7 for x in binary], group, normalize_std)
        else:  # no group standardisation: w1 = fn, w0 = fn - 1
            adv = torch.tensor([0.2 if x == 1.0 else -0.8 for x in binary.tolist()], dtype=torch.float64)
    loss = ll.build_loss("grpo", reward_transform=spec, normalize_std=normalize_std)
    got = loss(logps=logps, old_logps=old, mask=mask, rewards=rewards, group=group)
    expected = ll.build_loss("grpo")(logps=logps, old_logps=old, advantages=adv, mask=mask)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("strategy", ["best_random", "best_worst", "pow"])
def test_pf_ppo_weights_the_per_response_loss(strategy):
    logps, old, mask, group, _, _ = _rollouts()
    mask[2] = 0  # a response without tokens: not counted
    rewards = torch.tanh(torch.randn(group.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    loss = ll.build_loss("grpo", reward_transform={"name": "pf_ppo", "strategy": strategy, "power": 3.0})
    got = loss(logps=logps, old_logps=old, mask=mask, rewards=rewards, group=group)
    plain = ll.build_loss("grpo")(logps=logps, old_logps=old, advantages=_group_adv_loop(rewards, group), mask=mask)
    plain = plain.detach()
    w = _pf_loop(rewards, group, strategy, power=3.0)
    counted = [bool(m.any()) for m in mask]
    total_w = sum(float(w[i]) for i in range(len(w)) if counted[i])
    scale = sum(counted) / total_w
    expected = torch.stack([plain[i] * (float(w[i]) * scale if counted[i] else 0.0) for i in range(len(w))])
    torch.testing.assert_close(got, expected)
    # through the objective: the weighted mean sum_i w_i l_i / sum_i w_i over the counted responses
    obj = Objective({"grpo": {"reward_transform": {"name": "pf_ppo", "strategy": strategy, "power": 3.0}}})
    out = obj({"logps": logps, "old_logps": old, "mask": mask, "rewards": rewards, "group": group})
    weighted = sum(float(w[i]) * float(plain[i]) for i in range(len(w)) if counted[i]) / total_w
    assert float(out.value) == pytest.approx(weighted, rel=1e-10)


def test_pf_ppo_combines_with_given_advantages_for_ppo():
    logps, old, mask, group, _, binary = _rollouts()
    adv = torch.randn(group.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss = ll.build_loss("ppo_clip", reward_transform={"name": "pf_ppo", "strategy": "best_of_n"})
    got = loss(logps=logps, old_logps=old, advantages=adv, mask=mask, rewards=binary, group=group)
    plain = ll.build_loss("ppo_clip")(logps=logps, old_logps=old, advantages=adv, mask=mask)
    w = RF.normalize_weights(_pf_loop(binary, group, "best_of_n"), mask.bool().any(-1))
    torch.testing.assert_close(got, plain * w)
    assert float(w.sum()) == pytest.approx(float(mask.bool().any(-1).sum()))


def test_recipe_configures_the_transform_and_the_inputs_follow():
    spec = OmegaConf.create(
        "objective:\n  grpo:\n    reward_transform: {name: uwo, coef: 0.25}\n    normalize_std: false\n"
    )
    obj = Objective(spec)
    loss = obj.losses["grpo"]
    assert isinstance(loss.reward_transform, ll.RewardTransform) and loss.reward_transform.coef == 0.25
    assert loss.input_names() == (
        ("logps", "old_logps", "mask"),
        ("advantages", "ref_logps", "entropy", "rewards", "group"),
    )
    assert ll.LOSSES.get("grpo").input_names()[0] == ("logps", "old_logps", "advantages", "mask")  # class: unchanged
    logps, old, mask, group, ens, _ = _rollouts()
    out = obj({"logps": logps, "old_logps": old, "mask": mask, "rewards": ens, "group": group})
    out.loss.backward()
    assert torch.isfinite(logps.grad).all()
    fresh = Objective(spec)
    fresh.load_state_dict(obj.state_dict())  # stateless transforms: the loss's state round-trips unchanged


def test_registry_and_command_line_list():
    assert ll.list_reward_transforms() == NAMES
    assert ll.extra_listings()["reward_transforms"]() == NAMES
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["list", "reward_transforms"]) == 0
    assert buf.getvalue().split() == NAMES
    built = ll.build_reward_transform({"name": "pf_ppo", "strategy": "best_worst"})
    assert ll.build_reward_transform(built) is built
    assert ll.build_reward_transform("UWO", coef=1.0).coef == 1.0  # names ignore case


# ------------------------------------------------------------------------------------------- DDP


def _pf_rank(parts, spec):
    from lightning_losses.distributed import rank

    logps, old, mask, rewards, group = (p[rank()] for p in parts)
    logps = logps.clone().requires_grad_(True)
    obj = Objective({"grpo": {"reward_transform": spec}})
    out = obj({"logps": logps, "old_logps": old, "mask": mask, "rewards": rewards, "group": group})
    out.loss.backward()
    return out.value.detach(), logps.grad


@pytest.mark.parametrize("spec", [{"name": "pf_ppo", "strategy": "pow", "power": 2.0}, "pf_ppo"])
def test_pf_ppo_ddp_equals_one_process(ddp, spec):
    logps, old, mask, group, _, _ = _rollouts(sizes=(3, 1, 4, 2))
    rewards = torch.tanh(torch.randn(group.numel(), generator=torch.Generator().manual_seed(8), dtype=torch.float64))
    cut = 4  # prompts 7 and 5 on rank 0, prompts 3 and 1 on rank 1: each prompt on one rank

    def split(t):
        return [t[:cut].detach(), t[cut:].detach()]

    results = ddp.run(_pf_rank, [split(t) for t in (logps, old, mask, rewards, group)], spec)
    obj = Objective({"grpo": {"reward_transform": spec}})
    out = obj({"logps": logps, "old_logps": old, "mask": mask, "rewards": rewards, "group": group})
    (grad,) = torch.autograd.grad(out.loss, logps)
    assert float(results[0][0]) == pytest.approx(float(out.value), rel=1e-12)
    assert float(results[1][0]) == pytest.approx(float(out.value), rel=1e-12)
    # DDP averages the ranks' gradients: each rank's share times the world size is its rows of the 1-process one
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]) / 2, grad)


# ------------------------------------------------------------------------------------------- errors


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match=r"unknown reward transform `uwo2`.*Valid names: `noisy_reward`"):
        ll.build_reward_transform("uwo2")
    with pytest.raises(ConfigurationError, match=r"reward transform `noisy_reward` is missing required argument"):
        ll.build_reward_transform("noisy_reward")
    with pytest.raises(ConfigurationError, match=r"`fn_rate` must be in \[0.0, 0.5\), got 0.5"):
        ll.build_reward_transform("noisy_reward", fn_rate=0.5)
    with pytest.raises(ConfigurationError, match=r"`fp_rate` must be in \[0.0, 0.5\), got -0.1"):
        ll.build_reward_transform("noisy_reward", fn_rate=0.1, fp_rate=-0.1)
    with pytest.raises(ConfigurationError, match=r"`mode` must be one of `backward`, `forward`"):
        ll.build_reward_transform("noisy_reward", fn_rate=0.1, mode="both")
    with pytest.raises(ConfigurationError, match=r"`strategy` must be one of `best_random`, `best_worst`"):
        ll.build_reward_transform("pf_ppo", strategy="bon")
    with pytest.raises(ConfigurationError, match=r"`power` must be > 0.0, got 0.0"):
        ll.build_reward_transform("pf_ppo", strategy="pow", power=0.0)
    with pytest.raises(ConfigurationError, match=r"`coef` must be >= 0.0, got -1.0"):
        ll.build_reward_transform("uwo", coef=-1.0)
    with pytest.raises(ConfigurationError, match=r"reward transform `wco` got an unexpected argument `coef`"):
        ll.build_reward_transform("wco", coef=1.0)
    with pytest.raises(ConfigurationError, match=r"`reward_transform` must be a name, a \{name: \.\.\., \.\.\.\}"):
        ll.build_reward_transform(torch.nn.Identity())
    with pytest.raises(ConfigurationError, match=r"term `grpo`: unknown reward transform `wcoo`"):
        Objective({"grpo": {"reward_transform": "wcoo"}})
    with pytest.raises(ConfigurationError, match=r"noisy_reward \(mode `backward`\) is affine in the reward, so"):
        ll.build_loss("grpo", reward_transform={"name": "noisy_reward", "fn_rate": 0.1, "mode": "backward"})
    with pytest.raises(ConfigurationError, match=r"`normalize_std` must be a bool \(True or False\), got 'no'"):
        ll.build_loss("grpo", normalize_std="no")


def test_input_errors():
    logps, old, mask, group, ens, binary = _rollouts()
    wco = ll.build_loss("grpo", reward_transform="wco")
    with pytest.raises(ValueError, match=r"`rewards` is required with `reward_transform` \(WCO\); got none"):
        wco(logps=logps, old_logps=old, mask=mask, group=group)
    with pytest.raises(ValueError, match=r"got both `advantages` and `rewards`: `reward_transform` \(WCO\) turns"):
        wco(logps=logps, old_logps=old, mask=mask, rewards=ens, group=group, advantages=binary)
    with pytest.raises(ValueError, match=r"`group` \[N\] \(the prompt id of each response\) is required to turn"):
        wco(logps=logps, old_logps=old, mask=mask, rewards=ens)
    with pytest.raises(ValueError, match=r"`rewards` must be a floating tensor \[N, K\] .* for `wco`, got \[8\]"):
        wco(logps=logps, old_logps=old, mask=mask, rewards=binary, group=group)
    with pytest.raises(ValueError, match=r"`rewards` must be 0 or 1 for `noisy_reward` \(a verifier's fail / pass\)"):
        ll.build_loss("grpo", reward_transform={"name": "noisy_reward", "fn_rate": 0.1})(
            logps=logps, old_logps=old, mask=mask, rewards=binary + 0.5, group=group
        )
    with pytest.raises(ValueError, match=r"`group` \[N\] \(the prompt id of each response\) is required for PF-PPO"):
        ll.build_loss("grpo", reward_transform="pf_ppo")(logps=logps, old_logps=old, mask=mask, rewards=binary)
    with pytest.raises(ValueError, match=r"`group` must be an integer tensor \[N\] .* got \[3\]"):
        RF.pf_ppo_weights(binary, group[:3])
    with pytest.raises(ValueError, match=r"`advantages` \(\[N\] or \[N, T\]\) is required; or set `reward_transform`"):
        ll.build_loss("grpo")(logps=logps, old_logps=old, mask=mask)
    with pytest.raises(ValueError, match=r"`rewards` is only used with a `reward_transform`"):
        ll.build_loss("grpo")(logps=logps, old_logps=old, mask=mask, advantages=binary, rewards=binary)
    with pytest.raises(ValueError, match=r"`mask` \[N, T\] \(1 on response tokens\) is required"):
        ll.build_loss("grpo")(logps, old, binary)
    with pytest.raises(ValueError, match=r"term `grpo` needs input `group`|`group` \[N\]"):
        Objective({"grpo": {"reward_transform": "uwo"}})(
            {"logps": logps, "old_logps": old, "mask": mask, "rewards": ens}
        )
    with pytest.raises(ValueError, match=r"`fn_rate` must be in \[0, 0.5\) \(a verifier error rate\), got 0.7"):
        RF.noisy_reward_forward(binary, 0.7)
    with pytest.raises(ValueError, match=r"`coef` must be >= 0, got -0.5"):
        RF.uwo(ens, coef=-0.5)
    with pytest.raises(ValueError, match=r"`strategy` must be one of"):
        RF.pf_ppo_weights(binary, group, strategy="top")
    with pytest.raises(ValueError, match=r"`rewards` must be a tensor \[N\] \(one reward per response\) for `pf_ppo`"):
        RF.pf_ppo_weights(ens, group)
