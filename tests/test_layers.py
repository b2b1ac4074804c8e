"""The package's architecture, checked on its import graph (parsed with ``ast``, every ``import`` in a module,
including the ones inside functions).

Layers, bottom to top. A module imports only from its own layer or the layers below it; nothing runs back up.

* ``foundation``: errors, validation (arguments and tensors), the registry, distributed helpers, the supported
  strategies, the shared sync point and step-state helpers, schedules and the slot protocols: what every pillar may
  use;
* ``functional``: pure tensor functions (losses, token aggregation, the dual-ascent maths of entropy targets);
* ``losses``: the loss pillar (``nn.Module`` losses over the functional layer);
* ``objective``: the objective and :class:`~lightning_losses.LossesMixin`, which compose losses with the slots;
* ``callback base``: the callback registry and :class:`~lightning_losses.callbacks.MixinCallback`;
* ``callback pillars``: reweighting, perturbation, entropy control (each a mixin callback and its state);
* ``recipes``: recipe building and checks, loggers, the demo models and data;
* ``package``: ``lightning_losses/__init__`` (the public API);
* ``commands``: ``runner`` (train one recipe), ``compare`` and the ``lightning-losses`` command.

The four pillars (losses, reweighting, perturbation, entropy) never import each other: what several of them need
lives in a lower layer (e.g. :mod:`lightning_losses.sync`, :mod:`lightning_losses._state`,
:mod:`lightning_losses.functional.aggregation`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_losses

ROOT = Path(lightning_losses.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [  # bottom to top; entries are module-name prefixes
    (
        "foundation",
        (
            "errors",
            "_cli_parser",
            "_compat",
            "_log_rows",
            "_deferred",
            "_validation",
            "registry",
            "distributed",
            "strategies",
            "reduction",
            "sync",
            "_state",
            "schedules",
            "slots",
            "sample_store",
        ),
    ),
    ("functional", ("functional",)),
    ("losses", ("losses",)),
    (
        "objective",
        (
            "_objective_spec",
            "_objective_reduce",
            "_objective_logging",
            "objective",
            "mixin",
            "_accumulation",
            "_extra_state",
        ),
    ),
    ("callback base", ("callbacks", "diagnostics")),
    ("callback pillars", ("reweighting", "perturbation", "entropy", "curvature")),
    (
        "recipes",
        (
            "_recipe_checks",
            "_classpath",
            "_checkpoints",
            "_loggers",
            "_recipe_build",
            "config",
            "demo",
            "recipes",
            "_jsonargs",
        ),
    ),
    ("package", ("",)),  # lightning_losses/__init__.py
    ("commands", ("_save_recipe", "runner", "report", "compare", "cli")),
]

PILLARS = ("losses", "reweighting", "perturbation", "entropy")

#: pillar -> pillar imports that are allowed, with the reason
PILLAR_EXCEPTIONS = {
    ("entropy", "losses.entropy"): "the entropy package re-exports the entropy-regularising losses (discoverability)",
}

#: private names still imported across modules, with the reason (to be made public or kept inside their module)
PRIVATE_EXCEPTIONS: dict[tuple[str, str, str], str] = {}


def _modules() -> dict[str, tuple[Path, bool]]:
    """``dotted name (without the package prefix) -> (path, is a package)``; the root package is ``""``."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _target(module: str, is_pkg: bool, node: ast.ImportFrom) -> str | None:
    """The absolute dotted name ``node`` imports from, without the package prefix; ``None`` outside the package."""
    if node.level:
        base = module.split(".") if module else []
        if not is_pkg:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        if node.module is None or node.module.split(".")[0] != "lightning_losses":
            return None
        name = node.module.removeprefix("lightning_losses").removeprefix(".")
    return name


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """``(edges, private)``: the modules each module imports, and ``(module, from, name)`` for every private name
    imported from another module."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    private = []
    for module, (path, is_pkg) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "lightning_losses":
                        edges[module].add(alias.name.removeprefix("lightning_losses").removeprefix("."))
            elif isinstance(node, ast.ImportFrom):
                source = _target(module, is_pkg, node)
                if source is None:
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}" if source else alias.name
                    if full in MODULES:  # `from pkg import submodule`
                        edges[module].add(full)
                        continue
                    edges[module].add(source)
                    if alias.name.startswith("_") and source != module:
                        private.append((module, source, alias.name))
    for targets in edges.values():
        targets.discard("__future__")
    return edges, private


EDGES, PRIVATE = _imports()


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix that matches ``module``."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best is None:
        raise AssertionError(f"module `lightning_losses.{module}` is in no layer: add it to LAYERS in {__file__}")
    return best


def _pillar(module: str) -> str | None:
    head = module.split(".")[0]
    return head if head in PILLARS else None


def test_every_module_has_a_layer_and_the_graph_is_parsed():
    for module in MODULES:
        layer_of(module)
    assert {"sync", "_state", "functional.aggregation", "runner", "slots"} <= set(MODULES)
    assert "sync" in EDGES["reweighting.base"] and "_state" in EDGES["perturbation.trajectory"]  # the parser works


def test_no_import_runs_back_up_the_layers():
    upward = [
        f"lightning_losses.{m or '__init__'} ({LAYERS[layer_of(m)][0]}) imports lightning_losses.{t} "
        f"({LAYERS[layer_of(t)][0]})"
        for m, targets in sorted(EDGES.items())
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_pillars_do_not_import_each_other():
    crossing = [
        f"lightning_losses.{m} imports lightning_losses.{t}"
        for m, targets in sorted(EDGES.items())
        for t in sorted(targets)
        if _pillar(m) and _pillar(t) and _pillar(m) != _pillar(t) and (m, t) not in PILLAR_EXCEPTIONS
    ]
    assert not crossing, "\n".join(crossing)


def test_no_import_cycle_between_modules():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(EDGES.get(v, ())):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_private_name_is_imported_across_modules():
    found = {entry for entry in PRIVATE if entry not in PRIVATE_EXCEPTIONS}
    assert not found, sorted(found)


@pytest.mark.parametrize(
    ("old", "names"),
    [
        ("lightning_losses.reweighting.sync", ("sync_statistics", "REDUCTIONS")),
        ("lightning_losses.reweighting.guards", ("step_skipped",)),
        ("lightning_losses.entropy.controller", ("entropy_error", "dual_ascent_step")),
        ("lightning_losses.functional.policy", ("aggregate_tokens", "NORMALIZATIONS")),
        ("lightning_losses.functional._checks", ("not_ignored", "upcast_half", "check_multiclass")),
        ("lightning_losses.cli", ("run_fit",)),
        ("lightning_losses.perturbation.guards", ("_restored_buffers",)),
    ],
)
def test_old_import_paths_keep_working(old, names):
    import importlib

    module = importlib.import_module(old)
    for name in names:
        assert getattr(module, name) is not None


def test_the_exception_lists_hold_no_stale_entry():
    """An exception that no longer occurs is removed from its list (the lists only shrink)."""
    pillar_edges = {(m, t) for m, targets in EDGES.items() for t in targets}
    assert not set(PILLAR_EXCEPTIONS) - pillar_edges, "stale PILLAR_EXCEPTIONS entries"
    assert not set(PRIVATE_EXCEPTIONS) - set(PRIVATE), "stale PRIVATE_EXCEPTIONS entries"
