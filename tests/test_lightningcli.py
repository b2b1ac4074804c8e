"""The library's callbacks in a plain LightningCLI YAML (`trainer.callbacks: [{class_path: lightning_losses.SAM}]`),
and any Lightning callback / logger by `class_path` in a lightning-losses recipe."""

import yaml

import lightning_losses as ll
from lightning_losses.config import build_run, load_recipe


def test_sam_in_a_plain_lightningcli_yaml(tmp_path):
    from lightning.pytorch.cli import LightningCLI

    config = {
        "seed_everything": 0,
        "model": {"class_path": "tests.helpers.own_model.OwnNet", "init_args": {"num_features": 8, "num_classes": 3}},
        "data": {"class_path": "tests.helpers.own_model.TinyData"},
        "trainer": {
            "max_steps": 3,
            "accelerator": "cpu",
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "limit_val_batches": 0,
            "callbacks": [{"class_path": "lightning_losses.SAM", "init_args": {"rho": 0.07}}],
        },
    }
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(args=["fit", "--config", str(path)], save_config_callback=None)
    (sam,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, ll.SAM)]
    assert sam.engine.radius(0) == 0.07 and cli.trainer.global_step == 3
    assert sam.engine.perturbed_steps == 3  # it acted on every step


def test_any_lightning_callback_and_logger_by_class_path_in_a_recipe(tmp_path):
    swa = {"class_path": "lightning.pytorch.callbacks.StochasticWeightAveraging", "init_args": {"swa_lrs": 0.01}}
    csv = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "mine"}}
    cfg = load_recipe(
        {"trainer": {"callbacks": [swa], "default_root_dir": str(tmp_path)}, "logger": csv, "callbacks": {"sam": {}}}
    )
    run = build_run(cfg)
    names = [type(cb).__name__ for cb in run.trainer.callbacks]
    assert "StochasticWeightAveraging" in names and "SAM" in names
    (logger,) = run.trainer.loggers
    assert type(logger).__name__ == "CSVLogger" and logger.name == "mine" and logger.save_dir == str(tmp_path)
