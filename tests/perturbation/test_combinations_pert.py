"""Weight perturbation combined with reweighting, entropy terms, gradient accumulation, skipped batches, tied
weights, BatchNorm and mid-step checkpoints; and the errors when a plug-in's hook is not in effect."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError

from ._combo import GROUPS, Net, dataset, fit, params

REWEIGHTING = {
    "loss_softmax": lambda: ll.SampleReweighting("loss_softmax", temperature=0.5),
    "group_dro": lambda: ll.SampleReweighting("group_dro", step_size=1.0, num_groups=GROUPS),
    "entropy": lambda: ll.EntropyControl(target=1.0, lr=0.5),
}
IDENTITY_PERTURBATIONS = {
    "sam": lambda: ll.SAM(rho=0.0),
    "sam_every_2": lambda: ll.SAM(rho=0.0, every_n_steps=2),
    "amp_inner_2": lambda: ll.AdversarialModelPerturbation(epsilon=0.0, inner_steps=2),
}


def _assert_equal(a, b, atol=1e-7):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


# ---------------------------------------------------------------------------------------------- defect 1
@pytest.mark.parametrize("plugin", sorted(REWEIGHTING))
@pytest.mark.parametrize("perturbation", sorted(IDENTITY_PERTURBATIONS))
def test_zero_radius_with_plugins_and_accumulation_equals_the_plain_run(plugin, perturbation):
    """A zero perturbation re-runs every micro-batch at w: each must get the weights (and terms) it had at w."""
    plain, _ = fit([REWEIGHTING[plugin]()], model=Net(bn=True, tied=True), k=2, max_steps=6)
    perturbed, _ = fit(
        [IDENTITY_PERTURBATIONS[perturbation](), REWEIGHTING[plugin]()], model=Net(bn=True, tied=True), k=2, max_steps=6
    )
    assert perturbed.calls > plain.calls  # the perturbed passes did run
    _assert_equal(params(perturbed), params(plain))


@pytest.mark.parametrize("strategy", ["loss_softmax", "group_dro"])
def test_perturbed_step_over_micro_batches_equals_one_on_the_concatenated_batch(strategy):
    """Micro-batch 2 holds micro-batch 1's samples in another order, so reweighting the concatenated batch gives
    every sample the weight it gets in its micro-batch: SAM at k=2 must equal SAM at k=1 on batches of 8."""
    data = dataset(paired=4)
    one, _ = fit([ll.SAM(rho=0.3), REWEIGHTING[strategy]()], batch_size=8, k=1, data=data)
    two, _ = fit([ll.SAM(rho=0.3), REWEIGHTING[strategy]()], batch_size=4, k=2, data=data)
    _assert_equal(params(two), params(one), atol=2e-6)
