"""``perturbation/manual.py`` is plain PyTorch: it and everything it imports work with Lightning unimportable."""

import subprocess
import sys
import textwrap
from pathlib import Path

import lightning_losses

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, types

    class NoLightning(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("lightning", "pytorch_lightning"):
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, NoLightning())
    # the package `__init__` files import the Lightning integrations; load the modules below them on their own
    for name, folder in (("lightning_losses", ROOT), ("lightning_losses.perturbation", ROOT + "/perturbation")):
        package = types.ModuleType(name)
        package.__path__ = [folder]
        sys.modules[name] = package

    import torch
    from lightning_losses.perturbation.manual import perturbed_backward
    from lightning_losses.perturbation.presets import build_perturbation

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    engine = build_perturbation("sam", rho=0.05)
    loss = perturbed_backward(engine, model, lambda: torch.nn.functional.mse_loss(model(x), y))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is not None for p in model.parameters()) and engine.perturbed_steps == 1
    assert not [m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")]
    print("ok", float(loss) > 0)
    """
)


def test_manual_helper_imports_and_runs_without_lightning():
    root = str(Path(lightning_losses.__file__).parent)
    script = SCRIPT.replace("ROOT", repr(root))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok True"
