"""examples/tent_calibration.py (the README's Tent and temperature-scaling figures) runs end to end, shortened."""

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two fits and twelve test loops (about 15 s of CPU)
def test_tent_calibration_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    module = runpy.run_path(str(ROOT / "examples" / "tent_calibration.py"))
    (result,) = module["main"](["--seeds", "0", "--set", "trainer.max_epochs=1", "data.batch_size=256"])
    for shift in ("clean", "noise_0.3", "noise_0.5", "contrast_0.5"):
        for how in ("source", "norm_stats", "tent"):
            assert 0.0 <= result[f"acc/{shift}/{how}"] <= 1.0
    assert result["calibration/temperature"] > 0
    assert result["calibration/test_acc_scaled"] == result["calibration/test_acc_raw"]  # T keeps the argmax
    assert "1 seeds [0]: mean (min-max)" in capsys.readouterr().out
