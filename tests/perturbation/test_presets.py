"""The presets' public surface: one record per preset gives the factory and the callback the same defaults."""

import inspect

import pytest

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError

#: the end of every preset callback's signature: the logging cadence, then the engine options
TAIL = "log_every_n_steps: 'int | None' = None, **options: 'Any') -> 'None'"

SIGNATURES = {
    "sam": "(rho: 'Any' = 0.05, **options: 'Any') -> 'Perturbation'",
    "asam": "(rho: 'Any' = 0.5, eta: 'float' = 0.01, **options: 'Any') -> 'Perturbation'",
    "asam_p2": "(rho: 'Any' = 2.0, **options: 'Any') -> 'Perturbation'",
    "adversarial_model_perturbation": (
        "(epsilon: 'Any' = 0.5, inner_lr: 'float' = 1.0, inner_steps: 'int' = 1, **options: 'Any') -> 'Perturbation'"
    ),
    "awp": "(gamma: 'Any' = 0.005, warmup_epochs: 'int' = 0, **options: 'Any') -> 'Perturbation'",
}

CALLBACKS = {  # class, registry name, signature, state key of the default instance (checkpoints are keyed by it)
    "SAM": (
        "sam",
        "(rho: 'Any' = 0.05, " + TAIL,
        "SAM{'method': 'sam', 'rho': '0.05'}",
    ),
    "ASAM": (
        "asam",
        "(rho: 'Any' = 0.5, eta: 'float' = 0.01, variant: 'str' = 'authors', " + TAIL,
        "ASAM{'method': 'asam', 'eta': '0.01', 'rho': '0.5', 'variant': \"'authors'\"}",
    ),
    "AdversarialModelPerturbation": (
        "adversarial_model_perturbation",
        "(epsilon: 'Any' = 0.5, inner_lr: 'float' = 1.0, inner_steps: 'int' = 1, " + TAIL,
        "AdversarialModelPerturbation{'method': 'adversarial_model_perturbation', 'epsilon': '0.5', "
        "'inner_lr': '1.0', 'inner_steps': '1'}",
    ),
    "AWP": (
        "awp",
        "(gamma: 'Any' = 0.005, warmup_epochs: 'int' = 0, " + TAIL,
        "AWP{'method': 'awp', 'gamma': '0.005', 'warmup_epochs': '0'}",
    ),
}

ENGINE_KEYS = ("rule", "radius_mode", "scaling", "eta", "scale_params", "inner_lr", "inner_steps", "params")
ENGINE_KEYS += ("exclude", "min_ndim", "warmup_epochs")


def _engine_facts(engine):
    return {k: getattr(engine, k) for k in ENGINE_KEYS} | {"radius": engine.radius(0)}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_preset_factory_signature(name):
    factory = ll.PERTURBATIONS.get(name)
    assert str(inspect.signature(factory)) == SIGNATURES[name]
    assert factory.__name__ == name and factory.__doc__
    assert getattr(ll.perturbation, name) is factory


@pytest.mark.parametrize("cls_name", sorted(CALLBACKS))
def test_callback_signature_registry_name_and_state_key(cls_name):
    cls = getattr(ll, cls_name)
    name, signature, key = CALLBACKS[cls_name]
    assert str(inspect.signature(cls)) == signature
    assert ll.CALLBACKS.get(name) is cls
    assert cls().state_key == key
    assert cls.__module__ == "lightning_losses.perturbation.callback" and cls.__qualname__ == cls_name
    assert cls.__doc__


@pytest.mark.parametrize("cls_name", sorted(CALLBACKS))
def test_callback_builds_the_same_engine_as_its_preset(cls_name):
    cls = getattr(ll, cls_name)
    name = CALLBACKS[cls_name][0]
    assert _engine_facts(cls().engine) == _engine_facts(ll.build_perturbation(name))
    assert _engine_facts(cls(0.2).engine) == _engine_facts(ll.PERTURBATIONS.get(name)(0.2))  # positional radius
    assert repr(cls(every_n_steps=3).engine) == repr(ll.build_perturbation(name, every_n_steps=3))


def test_asam_variants():
    p2 = ll.ASAM(variant="p2", eta=0.3)  # eta does not apply to the p2 form (and is not kept)
    assert p2.method == "asam_p2" and p2.options == {"rho": 0.5, "variant": "p2"}
    assert _engine_facts(p2.engine) == _engine_facts(ll.build_perturbation("asam_p2", rho=0.5))
    assert p2.state_key == "ASAM{'method': 'asam_p2', 'rho': '0.5', 'variant': \"'p2'\"}"
    with pytest.raises(ConfigurationError, match="`variant` must be one of `authors`, `p2`, got 'x'"):
        ll.ASAM(variant="x")


def test_awp_implied_options_can_be_overridden():
    assert ll.build_perturbation("awp").params == ("*weight",) and ll.build_perturbation("awp").min_ndim == 2
    assert ll.AWP(min_ndim=1, params=None).engine.min_ndim == 1
    assert ll.AWP(params=None).engine.params is None


def test_preset_errors_name_the_preset_and_its_arguments():
    with pytest.raises(ConfigurationError, match="perturbation `awp` fixes `radius_mode`"):
        ll.AWP(radius_mode="global")
    with pytest.raises(
        ConfigurationError,
        match=r"perturbation `asam` got an unexpected argument `etaa`; did you mean `eta`\? Valid arguments: `rho`, "
        r"`eta`, `scale_params`",
    ):
        ll.build_perturbation("asam", etaa=0.1)
    with pytest.raises(ConfigurationError, match="^`epsilon` must be >= 0.0, got -1.0$"):
        ll.AdversarialModelPerturbation(epsilon=-1.0)


def test_old_import_paths_of_the_pass_helpers_keep_working():
    from lightning_losses.perturbation import callback, checkpoints, guards, passes

    for name in guards.__all__:
        assert getattr(guards, name) is getattr(passes if hasattr(passes, name) else checkpoints, name)
    for name in ("ascent_terms_only", "frozen_metrics", "metric_modules", "suppressed_logging"):
        assert getattr(callback, name) is getattr(passes, name)
    assert callback.guarded_checkpoints is checkpoints.guarded_checkpoints
    assert ll.perturbation.suppressed_logging is passes.suppressed_logging


def test_a_new_preset_is_one_record(monkeypatch):
    """A record gives the factory and, with one class line, the callback: same signature, defaults and docstring."""
    from lightning_losses.perturbation import PERTURBATIONS, PRESETS, Preset, PresetCallback, presets

    monkeypatch.setattr(PERTURBATIONS, "_entries", dict(PERTURBATIONS._entries))  # undone after the test
    record = Preset("toy", radius="zeta", defaults={"zeta": 0.3, "inner_steps": 2}, rule="clip", doc="Toy facts.")
    monkeypatch.setitem(PRESETS, "toy", record)  # removed after the test
    presets.register_preset(record)
    factory = PERTURBATIONS.get("toy")

    class Toy(PresetCallback, preset="toy"):
        """Toy as a callback."""

    assert (
        str(inspect.signature(factory))
        == "(zeta: 'Any' = 0.3, inner_steps: 'int' = 2, **options: 'Any') -> 'Perturbation'"
    )
    assert str(inspect.signature(Toy)) == "(zeta: 'Any' = 0.3, inner_steps: 'int' = 2, " + TAIL
    call = "``Toy(zeta=0.3, inner_steps=2, log_every_n_steps=None, **options)``"
    assert Toy.__doc__ == f"Toy as a callback.\n\n{call}. Toy facts."
    for engine in (factory(every_n_steps=2), Toy(every_n_steps=2).engine):
        assert (engine.rule, engine.radius(0), engine.inner_steps, engine.every_n_steps) == ("clip", 0.3, 2, 2)
    with pytest.raises(ConfigurationError, match="^`zeta` must be >= 0.0, got -1.0$"):
        Toy(zeta=-1.0)
