"""Every stateful object refuses a state dict with missing or unexpected keys (naming them), instead of loading it
half-way; SAF refuses a checkpointed trajectory table of another shape instead of silently starting a new one."""

import pytest
import torch

import lightning_losses as ll
from lightning_losses.entropy.controller import EntropyController

STATEFUL = {
    "SAF `saf`": lambda: ll.SAF(),
    "Perturbation": lambda: ll.build_perturbation("sam"),
    "TemperatureScaling": lambda: ll.TemperatureScaling(),
    "EntropyControl `entropy`": lambda: ll.EntropyControl(target=1.0, lr=0.1),
    "EntropyController": lambda: EntropyController(target=1.0, lr=0.1),
    "GroupDRO": lambda: ll.build_reweighter("group_dro", num_groups=2),
    "USEFUL": lambda: ll.USEFUL(),
}


@pytest.mark.parametrize("owner", list(STATEFUL))
def test_state_dict_keys_are_checked(owner):
    obj = STATEFUL[owner]()
    state = obj.state_dict()
    obj.load_state_dict(state)  # its own state loads
    first = sorted(state)[0]
    with pytest.raises(KeyError, match=rf"{owner} state_dict mismatch: missing \[\], unexpected \['bogus'\]"):
        obj.load_state_dict({**state, "bogus": 1})
    with pytest.raises(KeyError, match=rf"{owner} state_dict mismatch: missing \['{first}'\], unexpected \[\]"):
        obj.load_state_dict({k: v for k, v in state.items() if k != first})
    with pytest.raises(TypeError, match=rf"{owner} state_dict must be a mapping, got list"):
        obj.load_state_dict([])


def test_saf_refuses_a_checkpointed_table_of_another_shape():
    saved = ll.SAF(epochs_ago=1, num_samples=4)
    logits = torch.randn(2, 3)
    saved._tables(logits)  # allocates [4, 2, 3]
    state = saved.state_dict()
    same = ll.SAF(epochs_ago=1, num_samples=4)
    same.load_state_dict(state)
    assert same._tables(logits)[0] is state["logits"]  # kept, not replaced
    other = ll.SAF(epochs_ago=2, num_samples=4)
    other.load_state_dict(state)
    with pytest.raises(
        ll.ConfigurationError,
        match=r"SAF `saf`: the checkpointed trajectory table has shape \[4, 2, 3\] "
        r"but this run needs \[4, 3, 3\] \(samples, `epochs_ago` \+ 1, classes\)",
    ):
        other._tables(logits)
