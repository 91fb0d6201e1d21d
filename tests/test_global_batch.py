"""trainer.global_batch_size: the accumulation steps derived per world size, the errors, and the world size itself;
trainer.max_steps: unset unless given (a run trains by epochs)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose


def _trainer(global_batch, per_device, accumulation=1):
    return OmegaConf.create({"global_batch_size": global_batch, "per_device_train_batch_size": per_device,
                             "gradient_accumulation_steps": accumulation})


# (global batch, per device, processes) -> accumulation steps, worked out by hand.
@pytest.mark.parametrize("global_batch,per_device,world,expected", [
    (128, 4, 1, 32), (128, 4, 8, 4), (128, 4, 16, 2), (128, 2, 16, 4), (128, 1, 32, 4), (16, 4, 2, 2), (16, 2, 2, 4),
])
def test_accumulation_follows_from_the_global_batch(global_batch, per_device, world, expected):
    from internvl_exp.config.batch import accumulation_steps

    assert accumulation_steps(_trainer(global_batch, per_device), world) == expected


def test_without_a_global_batch_the_accumulation_is_used_as_given():
    from internvl_exp.config.batch import accumulation_steps

    assert accumulation_steps(_trainer(None, 4, accumulation=3), 8) == 3


@pytest.mark.parametrize("global_batch,per_device,world", [(128, 3, 1), (16, 4, 8), (128, 4, 64), (100, 4, 2)])
def test_a_split_that_does_not_divide_fails_naming_the_three_numbers(global_batch, per_device, world):
    from internvl_exp.errors import ConfigError
    from internvl_exp.config.batch import accumulation_steps

    with pytest.raises(ConfigError) as e:
        accumulation_steps(_trainer(global_batch, per_device), world)
    msg = str(e.value)
    assert f"trainer.global_batch_size={global_batch}" in msg
    assert f"trainer.per_device_train_batch_size={per_device}" in msg
    assert f"{world} process(es)" in msg


def test_global_batch_and_accumulation_together_are_refused():
    from internvl_exp.errors import ConfigError
    from internvl_exp.config.batch import accumulation_steps

    with pytest.raises(ConfigError, match="both set the batch"):
        accumulation_steps(_trainer(128, 4, accumulation=4), 8)  # consistent, but the batch is stated twice


def test_world_size_from_the_distributed_plan_then_the_environment(monkeypatch):
    from internvl_exp.config.world import planned_world_size
    from internvl_exp.dist import world_size

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_size() == 1
    assert planned_world_size(OmegaConf.create({"name": "single", "nproc_per_node": 1, "nnodes": 1})) == 1
    assert planned_world_size(OmegaConf.create({"name": "torchrun", "nproc_per_node": 8, "nnodes": 1})) == 8
    assert planned_world_size(OmegaConf.create({"name": "torchrun", "nproc_per_node": 8, "nnodes": 2})) == 16
    monkeypatch.setenv("WORLD_SIZE", "4")  # inside a worker the real process count wins over the plan
    assert planned_world_size(OmegaConf.create({"name": "torchrun", "nproc_per_node": 8, "nnodes": 2})) == 4
    assert world_size() == 4


def _planned(overrides, tmp_path, nproc, nnodes=1):
    """The config of a torchrun launch of `nproc` processes on each of `nnodes` nodes."""
    return compose([*overrides, "distributed=torchrun", f"distributed.nproc_per_node={nproc}",
                    f"distributed.nnodes={nnodes}", "distributed.rdzv_endpoint=node0:29500"], tmp_path)


def test_validation_checks_the_split_for_the_planned_processes(tmp_path, monkeypatch):
    from internvl_exp.config.validate import ConfigError, validate

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    validate(compose(["trainer.global_batch_size=32"], tmp_path))  # 32 / (4 x 1)
    validate(_planned(["trainer.global_batch_size=32"], tmp_path, 8))  # 32 / (4 x 8)
    with pytest.raises(ConfigError) as e:
        validate(_planned(["trainer.global_batch_size=32"], tmp_path, 8, nnodes=2))  # 32 / (4 x 16)
    assert "trainer.global_batch_size=32" in str(e.value) and "16 process(es) = 64" in str(e.value)
    with pytest.raises(ConfigError, match="both set the batch"):
        validate(compose(["trainer.global_batch_size=32", "trainer.gradient_accumulation_steps=8"], tmp_path))


def test_training_arguments_get_the_derived_accumulation(tmp_path, monkeypatch):
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = compose(["trainer.global_batch_size=24", "trainer.per_device_train_batch_size=3", "trainer.device=cpu"],
                  tmp_path)
    args = training_arguments(cfg, RunDir(tmp_path / "run"))
    assert args.gradient_accumulation_steps == 8 and args.per_device_train_batch_size == 3
    assert args.max_steps == -1 and args.num_train_epochs == 3  # by epochs: HF's "no step cap"


def test_max_steps_is_unset_by_default_and_validated(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    cfg = compose([], tmp_path)
    assert cfg.trainer.max_steps is None and cfg.trainer.num_train_epochs == 3
    validate(compose(["trainer.max_steps=7"], tmp_path))
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError) as e:
            validate(compose([f"trainer.max_steps={bad}"], tmp_path))
        assert "trainer.max_steps" in str(e.value) and "trainer.max_steps=null" in str(e.value)
    with pytest.raises(ConfigError, match="trainer.num_train_epochs"):
        validate(compose(["trainer.num_train_epochs=0"], tmp_path))
