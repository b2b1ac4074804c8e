"""The mixin callbacks share one base (:class:`~lightning_losses.callbacks.MixinCallback`): slot wiring, the
checkpoint ``state_key`` (pinned: checkpoints are matched by it), the slot protocols and ``@override`` on hooks."""

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import lightning_losses as ll
from lightning_losses.callbacks import MixinCallback
from lightning_losses.entropy import CalibrationMonitor, TemperatureScaling, Tent
from lightning_losses.perturbation import ASAM, AWP, SAM, WeightPerturbation
from lightning_losses.slots import SLOTS, ReweighterPlugin, StepPlugin, TermsPlugin

STATE_KEYS = [  # the keys written by the releases before the base class: they must not change
    (lambda: ll.SampleReweighting("group_dro", step_size=0.01), "SampleReweighting{'strategy': 'group_dro'}"),
    (lambda: ll.SampleReweighting(), "SampleReweighting{'strategy': 'loss_softmax'}"),
    (lambda: WeightPerturbation("sam", rho=0.1), "WeightPerturbation{'method': 'sam', 'rho': '0.1'}"),
    (lambda: WeightPerturbation(), "WeightPerturbation{'method': 'sam'}"),
    (lambda: SAM(rho=0.05), "SAM{'method': 'sam', 'rho': '0.05'}"),
    (lambda: ASAM(), "ASAM{'method': 'asam', 'eta': '0.01', 'rho': '0.5', 'variant': \"'authors'\"}"),
    (lambda: AWP(), "AWP{'method': 'awp', 'gamma': '0.005', 'warmup_epochs': '0'}"),
    (lambda: ll.EntropyControl(target=1.0, lr=0.1), "EntropyControl{'name': 'entropy'}"),
    (lambda: ll.EntropyControl(target=1.0, lr=0.1, name="ent2"), "EntropyControl{'name': 'ent2'}"),
    (lambda: ll.SAF(), "SAF{'name': 'saf'}"),
    (lambda: ll.SAF(name="x"), "SAF{'name': 'x'}"),
    (lambda: ll.USEFUL(), "USEFUL{'separating_epoch': 1, 'factor': 2}"),
]

MIXIN_CALLBACKS = {
    "reweighter": lambda: ll.SampleReweighting("loss_softmax"),
    "step": lambda: SAM(rho=0.05),
    "terms": lambda: ll.EntropyControl(target=1.0, lr=0.1),
    "terms (SAF)": lambda: ll.SAF(num_samples=4),
    "terms (USEFUL)": lambda: ll.USEFUL(num_samples=4),
}


class _Module(ll.LossesMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 2)
        self.configure_objective({"cross_entropy": {}})


@pytest.mark.parametrize(("build", "key"), STATE_KEYS)
def test_state_keys_are_unchanged(build, key):
    callback = build()
    assert callback.state_key == key
    assert callback.state_key is callback.state_key  # cached: Lightning reads it in every hook


@pytest.mark.parametrize("name", list(MIXIN_CALLBACKS))
def test_the_mixin_callbacks_attach_a_plugin_that_follows_their_slot_protocol(name):
    callback = MIXIN_CALLBACKS[name]()
    assert isinstance(callback, MixinCallback)
    module = _Module()
    callback.setup(None, module, "fit")
    plugins = module._ll_plugins()
    attached = plugins["terms"] if callback.slot == "terms" else [plugins[callback.slot]]
    assert len(attached) == 1 and isinstance(attached[0], SLOTS[callback.slot])
    callback.teardown(None, module, "fit")
    assert module._ll_plugins()[callback.slot] in (None, [])


@pytest.mark.parametrize("name", list(MIXIN_CALLBACKS))
def test_the_mixin_callbacks_refuse_a_module_without_the_mixin(name):
    callback = MIXIN_CALLBACKS[name]()
    with pytest.raises(
        ll.ConfigurationError, match=r"needs a LightningModule that uses `lightning_losses.LossesMixin`"
    ):
        callback.setup(None, L.LightningModule(), "fit")
    callback.teardown(None, L.LightningModule(), "fit")  # nothing attached: nothing to detach, no error


def test_the_slot_protocols():
    assert isinstance(MIXIN_CALLBACKS["step"](), StepPlugin)
    assert not isinstance(MIXIN_CALLBACKS["step"](), TermsPlugin)
    assert isinstance(ll.SAF(), TermsPlugin) and isinstance(ll.EntropyControl(target=1.0, lr=0.1), TermsPlugin)
    assert isinstance(lambda losses, **tensors: torch.ones_like(losses), ReweighterPlugin)
    assert set(SLOTS) == {"reweighter", "terms", "step"}


def test_a_subclass_must_name_its_state_key_fields():
    class Bare(MixinCallback):
        slot = "terms"

    with pytest.raises(NotImplementedError, match=r"Bare must define `state_key_fields`"):
        _ = Bare().state_key


HOOKS = {name for name, value in vars(Callback).items() if not name.startswith("_") and callable(value)}


@pytest.mark.parametrize(
    "cls",
    [
        MixinCallback,
        ll.SampleReweighting,
        WeightPerturbation,
        ll.EntropyControl,
        ll.SAF,
        Tent,
        TemperatureScaling,
        CalibrationMonitor,
    ],
)
def test_lightning_hooks_are_marked_override(cls):
    own = {
        name: value for name, value in vars(cls).items() if name in HOOKS and inspect.isfunction(value)
    }  # aliases too
    assert own, f"{cls.__name__} overrides no Lightning hook"
    missing = sorted(name for name, fn in own.items() if not getattr(fn, "__override__", False))
    assert not missing, f"{cls.__name__}: hooks without @override: {missing}"
