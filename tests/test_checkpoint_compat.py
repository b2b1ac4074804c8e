"""Checkpoints written before the ``nonfinite`` counts existed still load (the count starts at 0)."""

import pytest
import torch

import lightning_losses as ll


def test_reweighter_state_without_nonfinite_loads_with_a_zero_count():
    rw = ll.build_reweighter("group_dro", num_groups=2, step_size=0.1)
    rw(losses=torch.tensor([1.0, float("nan"), 3.0]), group=torch.tensor([0, 1, 1]))
    state = rw.state_dict()
    assert int(state["nonfinite"]) == 1
    old = {k: v for k, v in state.items() if k != "nonfinite"}
    fresh = ll.build_reweighter("group_dro", num_groups=2, step_size=0.1)
    fresh.load_state_dict(old)
    assert int(fresh.nonfinite) == 0
    torch.testing.assert_close(fresh.q, rw.q)
    with pytest.raises(KeyError, match=r"missing \['q'\]"):
        fresh.load_state_dict({k: v for k, v in old.items() if k != "q"})


def test_entropy_control_state_without_nonfinite_loads_and_keeps_its_window():
    cb = ll.EntropyControl(target=0.5, per_class=True)
    cb._accumulate_window(torch.tensor([0.2, 0.4]), None, torch.zeros(2, 3), torch.tensor([0, 2]))
    state = cb.state_dict()
    window = state["window"]
    old = {k: v for k, v in state.items() if k != "nonfinite"}
    old["window"] = torch.cat([window[:2], window[3:]])  # the layout before the count: [sum, count, class stats]
    fresh = ll.EntropyControl(target=0.5, per_class=True)
    fresh.load_state_dict(old)
    assert float(fresh.nonfinite) == 0.0
    torch.testing.assert_close(fresh._window, window)
