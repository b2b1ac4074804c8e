"""Recipes: every file in configs/ builds and runs; the schema's errors name key, expectation and value."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import lightning_losses as ll
from lightning_losses.config import build_logger, build_run, default_recipe, load_recipe

# configs/ subfolders whose recipes drive their own example (not the digits builder); each has its own test
OWN_BUILDERS = {
    "preference": "tests/llm/test_preference_demo.py",
    "lm": "tests/llm/test_char_lm.py",
    "sharded": "tests/sharded/test_recipe.py",  # 2 processes: fitted in the DDP pool there
}
CONFIGS = sorted(
    p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml") if not OWN_BUILDERS.keys() & set(p.parts)
)
SAF_RECIPE = str(Path(__file__).parents[1] / "configs" / "perturbation" / "saf.yaml")
ENTROPY_RECIPE = str(Path(__file__).parents[1] / "configs" / "entropy_target.yaml")
FAST = ["trainer.fast_dev_run=2", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def test_configs_dir_is_not_empty():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_builds_and_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(path, FAST)
    run = build_run(cfg)
    assert list(run.model.objective.losses) == list(cfg.objective)
    run.trainer.fit(run.model, datamodule=run.datamodule)
    # Entropy-SGD takes one optimizer step per `inner_steps` batches (Lightning steps on the epoch's last batch)
    assert run.trainer.global_step == (1 if "entropy_sgd" in (cfg.get("callbacks") or {}) else 2)


def test_configs_default_matches_the_embedded_default():
    assert load_recipe(Path(__file__).parents[1] / "configs" / "default.yaml") == load_recipe(None) == default_recipe()


def test_merge_replace_interpolation_and_overrides():
    cfg = load_recipe(
        {"vars": {"g": 3.0}, "objective": {"focal": {"gamma": "${vars.g}"}}, "data": {"label_noise": 0.2}},
        ["trainer.max_epochs=2", "data.batch_size=16", "objective.focal.alpha=0.5"],
    )
    assert list(cfg.objective) == ["focal"]  # replaced, not merged with the default cross_entropy
    assert cfg.objective.focal == {"gamma": 3.0, "alpha": 0.5}
    assert cfg.data.label_noise == 0.2 and cfg.data.batch_size == 16 and cfg.trainer.max_epochs == 2
    assert cfg.model.hidden_dim == default_recipe().model.hidden_dim  # merged
    replaced = load_recipe(None, ["objective={mse: {}}"])
    assert list(replaced.objective) == ["mse"]
    from_dictconfig = load_recipe(OmegaConf.create({"seed": 3}))
    assert from_dictconfig.seed == 3


@pytest.mark.parametrize(
    ("recipe", "overrides", "match"),
    [
        (
            {"objectve": {}},
            [],
            r"unknown recipe key `objectve` in the recipe; did you mean `objective`\? Valid keys: `seed`",
        ),
        (None, ["trainr.max_epochs=1"], r"unknown recipe key `trainr.max_epochs`; did you mean `trainer`\?"),
        (None, ["trainer.max_epochs"], r"an override must look like `key=value`, got 'trainer.max_epochs'"),
        ({"data": {"label_noise": 1.5}}, [], r"`data.label_noise` must be in \[0.0, 1.0\), got 1.5"),
        (
            {"data": {"label_nois": 0.1}},
            [],
            r"recipe section `data` got an unexpected argument `label_nois`; did you mean `label_noise`\?",
        ),
        (
            {"model": {"optimizer": "adam"}},
            [],
            r"`model.optimizer` must be one of `adamw`, `sgd`, `bsam`, got 'adam'; did you mean `adamw`\?",
        ),
        (
            {"model": {"num_classes": 3}},
            [],
            r"`model.num_classes` is set from the recipe's `data` / `objective`; remove it",
        ),
        ({"objective": {"focal": {"gamma": -1}}}, [], r"`objective`: term `focal`: `gamma` must be >= 0.0, got -1"),
        ({"objective": {"cros_entropy": {}}}, [], r"unknown loss `cros_entropy`; did you mean `cross_entropy`\?"),
        ({"callbacks": {"early_stop": {}}}, [], r"unknown callback `early_stop`; did you mean `early_stopping`\?"),
        (
            {"trainer": {"max_epoch": 1}},
            [],
            r"recipe section `trainer` got an unexpected argument `max_epoch`; did you mean `max_epochs`\?",
        ),
        (
            {"trainer": {"accelerator": "tpuu"}},
            [],
            r"^`trainer.accelerator` must be one of the names Lightning registers \(`auto`, `gpu`, `cpu`, .*\), "
            r"got 'tpuu'; did you mean `tpu`\?$",
        ),
        (
            None,
            ["trainer.strategy=dpp"],
            r"^`trainer.strategy` must be one of the names Lightning registers \(`auto`, `ddp`, `ddp_spawn`, .*, "
            r"\.\.\.\), got 'dpp'; did you mean `ddp`\?$",
        ),
        ({"trainer": {"strategy": "not_a_strategy_at_all"}}, [], r"got 'not_a_strategy_at_all'\.$"),
        # values of the wrong type are caught from Trainer's annotations, before they fail mid-training
        ({"trainer": {"max_epochs": "abc"}}, [], r"^`trainer.max_epochs` must be int or None, got 'abc'$"),
        (None, ["trainer.limit_train_batches=x"], r"`trainer.limit_train_batches` must be float or int or None"),
        (
            {"trainer": {"precision": 17}},
            [],
            r"`trainer.precision` must be one of 64, 32, 16, .*'bf16' or None, got 17",
        ),
        ({"trainer": {"enable_progress_bar": "yes"}}, [], r"`trainer.enable_progress_bar` must be bool or None"),
        # an objective the demo model cannot feed fails here, not in the first training step
        (
            {"objective": {"mse": {}}},
            [],
            r"^`objective.mse` cannot run on the demo model's outputs \(`logits` \[2, 10\], `target` \[2\], "
            r"`index` \[2\], `inputs` \[2, 64\]\): term `mse` needs input `pred`",
        ),
        (
            {"objective": {"cross_entropy": {}, "sigmoid_focal": {}}},
            [],
            r"`objective.sigmoid_focal` cannot run .*: `target` must have the shape of `logits` \[2, 10\], got \[2\]",
        ),
        (
            {"model": {"cosine_schedule": "maybe"}},
            [],
            r"`model.cosine_schedule` must be a bool \(True or False\), got 'maybe'",
        ),
        ({"logger": "tensorbord"}, [], r"`logger` must be one of `csv`, `wandb`, `none` .*got 'tensorbord'"),
        ({"seed": "x"}, [], r"`seed` must be an integer in \[0, 2\^32 - 1\] \(numpy's range\), got 'x'"),
        (None, ["seed=-1"], r"^`seed` must be an integer in \[0, 2\^32 - 1\] \(numpy's range\), got -1$"),
        # Lightning would divide by these mid-training
        (None, ["trainer.check_val_every_n_epoch=0"], r"^`trainer.check_val_every_n_epoch` must be an integer >= 1"),
        (None, ["trainer.accumulate_grad_batches=0"], r"^`trainer.accumulate_grad_batches` must be an integer >= 1"),
        (None, ["trainer.gradient_clip_val=-1"], r"^`trainer.gradient_clip_val` must be >= 0.0, got -1.0$"),
        (None, ["logger.project=x"], r"^a `logger` mapping needs a `name` \(one of `csv`, `wandb`, `none`\), got keys"),
        ({"logger": {"name": "none", "project": "x"}}, [], r"^`logger` none takes no arguments, got `project`$"),
        ({"logger": {"name": "wandb", "offline": "maybe"}}, [], r"^`logger.offline` must be a bool"),
        (None, ["callbacks.lr_monitor.logging_interval=nope"], r"^`callbacks.lr_monitor`: logging_interval should be"),
        (None, ["callbacks.lr_monitor={}", "logger=none"], r"^`callbacks.lr_monitor` logs to a logger, but the recipe"),
        (None, ["callbacks.sam.rho=x"], r"^`callbacks.sam.rho` must be a number or a schedule mapping"),
        (None, ["callbacks.sam.rho.name=warmupp"], r"^`callbacks.sam.rho`: unknown schedule `warmupp`; did you mean"),
        ({"data": [1, 2]}, [], r"^the recipe does not fit the default recipe's layout: Cannot merge incompatible"),
        (
            None,
            ["data=[1,2]"],
            r"^cannot apply override `data=\[1,2\]`: Cannot merge incompatible container types "
            r"\(at `data`\)$",
        ),
        (
            {"objective": {"focal": {"gamma": "${vars.missing}"}}},
            [],
            r"^cannot resolve the recipe's interpolations: Interpolation key 'vars.missing' not found \(at "
            r"`objective.focal.gamma`\)$",  # one line, naming the key
        ),
        ("nope.yaml", [], r"recipe file `nope.yaml` does not exist"),
        # issue 14: values that failed mid-training (exit 1) or ran as nonsense, now caught before training
        (
            None,
            ["data.batch_size=100000000000000000000"],
            r"^`data.batch_size` must be an integer in \[1, 1259\] \(the size of the training split\), got 1000",
        ),
        (
            None,
            ["model.hidden_dim=1000000000000"],
            r"^`model.hidden_dim` = 1000000000000 with `depth` = 2 makes a model of 1,000,000,000,076,000,000,000,010 "
            r"parameters; the demo model allows at most 268,435,456, got hidden_dim=1000000000000$",
        ),
        (
            SAF_RECIPE,
            ["callbacks.saf.epochs_ago=10000000"],
            r"^`callbacks.saf.epochs_ago` must be less than `trainer.max_epochs` = 15 \(the term compares with "
            r"outputs recorded `epochs_ago` epochs back, which must exist within the run\), got 10000000$",
        ),
        (
            SAF_RECIPE,
            ["callbacks.saf.epochs_ago=10000000", "trainer.max_epochs=-1", "trainer.max_steps=10"],
            r"^`callbacks.saf.epochs_ago` = 10000000 needs a trajectory table of 515.9 GiB \(samples x \(epochs_ago "
            r"\+ 1\) x classes\); at most 2 GiB, got 10000000$",
        ),
        *[
            (
                None,
                [f"trainer.val_check_interval={v}"],
                r"^`trainer.val_check_interval` must be an integer >= 1 \(batches\), a float in \(0.0, 1.0\] \(a "
                rf"fraction of the epoch\) or a duration, got {v}$",
            )
            for v in ("0", "0.0", "1.5", "-2")
        ],
        (None, ["trainer.log_every_n_steps=-1"], r"^`trainer.log_every_n_steps` must be an integer >= 0, got -1$"),
        (
            None,
            ["objective={a.b: {loss: cross_entropy}}"],
            r"^`objective` term name 'a.b' must be non-empty and contain no `.` \(a term name is a module name\); "
            r"use e.g. 'a_b' and `loss: <registered name>`$",
        ),
        (
            None,
            ["objective={training: {loss: cross_entropy}}"],
            r"^`objective` term name 'training' is an attribute of torch.nn.ModuleDict; choose another name",
        ),
        (
            None,
            ["objective={cross_entropy: {}"],
            r"^the value of `objective` is not valid YAML \(while parsing a flow mapping: did not find expected ',' "
            r"or '}'\), got '\{cross_entropy: \{\}'$",
        ),
        (
            None,
            ["trainer.default_root_dir=afile/runs"],
            r"^`trainer.default_root_dir` must be a folder that can be created, got 'afile/runs' \(`.*afile` is a "
            r"file\)$",
        ),
        (None, ["logger={name: csv, save_dir: afile}"], r"^`logger.save_dir` must be a folder that can be created"),
        (
            ENTROPY_RECIPE,
            ["callbacks.entropy_control.target=3.0"],
            r"^`callbacks.entropy_control.target` must be <= log C = 2.3026 nats \(the entropy of the uniform "
            r"distribution over the data's 10 classes: the target is unreachable\), got 3.0$",
        ),
        (
            ENTROPY_RECIPE,
            ["callbacks.entropy_control.target={name: linear, start: 0.5, end: 2.5, steps: 100}"],
            r"^`callbacks.entropy_control.target` must be <= log C = 2.3026 nats .*, got 2.5$",
        ),
        (
            None,
            ["callbacks={entropy: {band: [2.4, 3.0]}}"],
            r"^`callbacks.entropy.band\[0\]` must be <= log C = 2.3026 nats .*the band's low edge is unreachable",
        ),
        (
            None,
            ["data.val_fraction=0.5", "data.test_fraction=0.5"],
            r"^`data.val_fraction` must be < 1 - `test_fraction` = 0.5 \(the rest is the training split\), got 0.5$",
        ),
    ],
)
def test_recipe_errors(recipe, overrides, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ll.ConfigurationError, match=match):
        build_run(load_recipe(recipe, overrides))


def test_bad_yaml_and_list_yaml(tmp_path):
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ll.ConfigurationError, match=r"recipe file `.*bad.yaml` is not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ll.ConfigurationError, match=r"must hold a mapping, got a list"):
        load_recipe(tmp_path / "list.yaml")


def test_build_logger_forms(tmp_path):
    assert build_logger("none", str(tmp_path)) is False
    assert build_logger(None, str(tmp_path)) is False
    csv = build_logger("csv", str(tmp_path))
    assert type(csv).__name__ == "CSVLogger"
    with pytest.raises(ll.ConfigurationError, match=r"`logger` \(csv\) got an unexpected argument `projct`"):
        build_logger({"name": "csv", "projct": "x"}, str(tmp_path))


def test_recipe_files_that_hold_no_mapping_and_interpolating_overrides(tmp_path):
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ll.ConfigurationError, match=r"^recipe file `.*scalar.yaml` must hold a mapping \(.*int\)$"):
        load_recipe(scalar)
    # an override may interpolate the recipe (resolved against the whole recipe, not the override alone)
    cfg = load_recipe({"vars": {"epochs": 3}}, ["trainer.max_epochs=${vars.epochs}"])
    assert cfg.trainer.max_epochs == 3


def test_wandb_logger_goes_online_only_the_documented_ways(tmp_path, monkeypatch, capsys):
    """`mode` / `settings.mode` cannot send a run online: only `offline: false` or WANDB_MODE=online can."""
    pytest.importorskip("wandb")
    from lightning_losses.cli import main

    save = str(tmp_path)
    for env in (None, "offline"):
        if env is None:
            monkeypatch.delenv("WANDB_MODE", raising=False)
        else:
            monkeypatch.setenv("WANDB_MODE", env)
        for spec, key in (
            ({"mode": "online"}, "logger.mode"),
            ({"settings": {"mode": "online"}}, "logger.settings.mode"),
        ):
            with pytest.raises(
                ll.ConfigurationError,
                match=rf"^`{key}` 'online' would send the run to W&B, but the logger runs offline \(the default\); "
                r"to go online set `logger.offline: false` or WANDB_MODE=online$",
            ):
                build_logger({"name": "wandb", **spec}, save)
        built = build_logger({"name": "wandb", "settings": {"mode": "offline"}}, save)  # built, never started
        assert built._offline is True and built._wandb_init["mode"] == "offline"
        assert build_logger("wandb", save)._wandb_init["mode"] == "offline"  # explicit: outranks settings and env
    with pytest.raises(ll.ConfigurationError, match=r"^`logger.mode` 'online' .* \(`logger.offline: true`\); to go"):
        build_logger({"name": "wandb", "offline": True, "mode": "online"}, save)
    online = build_logger({"name": "wandb", "offline": False, "mode": "online"}, save)  # the user says so
    assert online._offline is False and online._wandb_init["mode"] == "online"
    assert "mode" not in build_logger({"name": "wandb", "offline": False}, save)._wandb_init  # W&B's own default
    with pytest.raises(ll.ConfigurationError, match=r"^`logger.mode` 'offline' contradicts `logger.offline: false`"):
        build_logger({"name": "wandb", "offline": False, "mode": "offline"}, save)
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ll.ConfigurationError, match=r"^`logger.settings.mode` 'dryrun' contradicts WANDB_MODE=online"):
        build_logger({"name": "wandb", "settings": {"mode": "dryrun"}}, save)
    with pytest.raises(ll.ConfigurationError, match=r"^`logger.mode` must be one of `online`, .*, got 'disabled'"):
        build_logger({"name": "wandb", "mode": "disabled"}, save)
    with pytest.raises(ll.ConfigurationError, match=r"^`logger.settings.mood`: Extra inputs are not permitted, got 1$"):
        build_logger({"name": "wandb", "settings": {"mood": 1}}, save)
    with pytest.raises(ll.ConfigurationError, match=r"^`logger.settings` must be a mapping of W&B settings, got 'x'$"):
        build_logger({"name": "wandb", "settings": "x"}, save)
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ll.ConfigurationError, match=r"^`logger`: Providing log_model=True and offline=True is an inv"):
        build_logger({"name": "wandb", "log_model": True}, save)  # Lightning's two-line message, on one line
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--logger", "{name: wandb, mode: online}", "--print_config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lightning-losses: error: `logger.mode` 'online' would send")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc (not writable even by root)")
def test_unwritable_default_root_dir_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ll.ConfigurationError,
        match=r"^`trainer.default_root_dir` must be a writable folder, got '/proc/ll-nope/runs' \(.* in `/proc`\)$",
    ):
        build_run(load_recipe(None, ["trainer.default_root_dir=/proc/ll-nope/runs"]))
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
    build_run(load_recipe(None, ["trainer.default_root_dir=new/runs"]))
    assert list(tmp_path.iterdir()) == []  # a folder that can be created is not created by the check
