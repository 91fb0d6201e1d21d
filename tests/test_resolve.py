"""config/resolve.py: one run spec, decided once -- the recipe's defaults with their origins, and the numbers every
consumer (validation, the planner, the header, the Trainer) reads from it."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import compose, run_launch


def _spec(overrides, tmp_path, env=None):
    from internvl_exp.config.resolve import resolve

    return resolve(compose(overrides, tmp_path, resolved=False), overrides, env=env or {})


def test_tiny_keeps_the_demo_values_and_says_where_they_came_from(tmp_path):
    spec = _spec([], tmp_path)
    assert (spec.optimizer.lr, spec.data.max_seq_length, spec.trainer.bf16) == (2e-3, 512, False)
    assert spec.resolved.origins["optimizer.lr"] == "recipe tiny"
    spec = _spec(["optimizer.lr=0.01"], tmp_path)
    assert spec.optimizer.lr == 0.01 and spec.resolved.origins["optimizer.lr"] == "override"


def test_a_key_left_null_without_a_recipe_value_is_refused_by_name(tmp_path):
    from internvl_exp.config.resolve import resolve
    from internvl_exp.errors import ConfigError

    cfg = compose([], tmp_path, resolved=False)
    cfg.model.recipe.lr = None
    with pytest.raises(ConfigError, match=r"optimizer\.lr: not set, and model=tiny has no sourced recipe value"):
        resolve(cfg)


@pytest.mark.parametrize("nproc,nnodes,global_batch", [(1, 1, 16), (2, 1, 16), (4, 2, 64)])
def test_every_consumer_sees_the_resolved_world_and_accumulation(tmp_path, nproc, nnodes, global_batch):
    from internvl_exp.config.validate import config_problems
    from internvl_exp.train.reporting.console_header import processes_line
    from internvl_exp.train.planning.memory_plan import plan_memory

    dist = "single" if nproc * nnodes == 1 else "torchrun"
    overrides = [f"distributed={dist}", f"distributed.nproc_per_node={nproc}", f"distributed.nnodes={nnodes}",
                 f"trainer.global_batch_size={global_batch}"]
    if nnodes > 1:
        overrides.append("distributed.rdzv_endpoint=node0:29500")
    spec = _spec(overrides, tmp_path)
    world = nproc * nnodes
    assert spec.resolved.world_size == world == plan_memory(spec).world_size
    assert spec.resolved.gradient_accumulation_steps == global_batch // (4 * world)
    assert config_problems(spec) == []  # validation checked the split for the same world
    assert f"{nproc} process(es) per node x {nnodes} node(s)" in processes_line(spec) or world == 1
    assert f"accumulation {global_batch // (4 * world)}" in __import__(
        "internvl_exp.config.show", fromlist=["x"]).settings_line(spec)


def test_a_group_started_with_another_size_than_distributed_asks_is_refused(tmp_path):
    from internvl_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="WORLD_SIZE=2 processes, but distributed.nproc_per_node x nnodes = 8"):
        _spec(["distributed=torchrun", "distributed.nproc_per_node=8"], tmp_path, env={"WORLD_SIZE": "2"})
    # Inside an existing group with distributed=single, the group's size is the world.
    assert _spec([], tmp_path, env={"WORLD_SIZE": "2"}).resolved.world_size == 2


def test_the_trainer_gets_the_resolved_accumulation_and_eval_strategy(tmp_path, demo_dir):
    from internvl_exp.outputs import RunDir
    from internvl_exp.train.recipe.args import training_arguments

    spec = _spec(["trainer.global_batch_size=8", "trainer.per_device_train_batch_size=2",
                  f"paths.demo_data_dir={demo_dir}"], tmp_path)
    args = training_arguments(spec, RunDir(tmp_path / "run"))
    assert args.gradient_accumulation_steps == spec.resolved.gradient_accumulation_steps == 4
    assert args.eval_strategy.value == spec.trainer.eval_strategy == "steps"  # the demo has eval data
    assert (args.learning_rate, args.bf16) == (spec.optimizer.lr, spec.trainer.bf16)


def test_cfg_job_prints_the_resolved_spec_with_origins_and_no_auto():
    r = run_launch(["optimizer.lr=0.01", "--cfg", "job"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "  lr: 0.01  # override" in lines and "  max_seq_length: 512  # recipe tiny" in lines
    spec = OmegaConf.create(r.stdout)
    assert spec.optimized_metric == "final_eval_loss" and spec.trainer.eval_strategy == "steps"
    assert spec.resolved.tokens_per_tile == 16  # (64 / 8)^2 x 0.5^2
    # Every key that composes as auto/null-for-later is decided (trainer.device stays auto here only: --cfg job
    # imports no torch; the launch decides it before writing config.yaml; `resume: auto` is a policy, not a value).
    for key in ("model.dtype", "optimized_metric", "trainer.eval_strategy", "optimizer.lr", "optimizer.scheduler",
                "optimizer.weight_decay", "optimizer.warmup_ratio", "data.max_seq_length", "trainer.bf16",
                "trainer.activation_checkpointing"):
        assert OmegaConf.select(spec, key) not in (None, "auto"), key


def test_a_rejected_run_leaves_no_directory_it_made(tmp_path):
    out = tmp_path / "fresh" / "outputs"
    r = run_launch([f"paths.output_dir={out}", "optimizer.lr=-1", "data.length_policy=maybe"])
    assert r.returncode != 0 and "data.length_policy" in (r.stdout + r.stderr)
    assert not (tmp_path / "fresh").exists()


def test_a_dataset_the_length_policy_empties_stops_before_the_model_naming_it(tmp_path, demo_dir, tokenizer):
    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.errors import UserError

    spec = _spec([f"paths.demo_data_dir={demo_dir}", "data.max_seq_length=40", "data.eval_fraction=0",
                  "data.eval.meta_path=null"], tmp_path)
    with pytest.raises(UserError) as e:
        build_from_config(spec, tokenizer, spec.resolved.tokens_per_tile)
    message = str(e.value)
    assert "longer than data.max_seq_length=40" in message and "data.max_drop_share=1" in message
    assert "nothing left of it" in message  # at least one demo dataset is emptied at 40 tokens
    # 120 tokens drop 8 of 48 `shapes` lines (17% > the default 5%): stopped too, naming it.
    spec = _spec([f"paths.demo_data_dir={demo_dir}", "data.max_seq_length=120", "data.eval_fraction=0",
                  "data.eval.meta_path=null"], tmp_path)
    with pytest.raises(UserError, match=r"shapes: 8 of 48 lines \(17%\) longer than data.max_seq_length=120"):
        build_from_config(spec, tokenizer, spec.resolved.tokens_per_tile)
    # Accepting the loss trains on what is left, and the report says what was dropped per dataset.
    spec = _spec([f"paths.demo_data_dir={demo_dir}", "data.max_seq_length=120", "data.max_drop_share=1",
                  "data.eval_fraction=0", "data.eval.meta_path=null"], tmp_path)
    _, report = build_from_config(spec, tokenizer, spec.resolved.tokens_per_tile)
    assert report.as_dict()["dropped_too_long_per_dataset"] == {"shapes": 8, "compare": 10} == report.dropped_too_long


@pytest.mark.slow
def test_the_8b_preset_on_the_mix_at_512_tokens_stops_before_the_model_naming_compare(tmp_path):
    r = run_launch(["model=internvl2_8b", "model.random_init=true", "data=mix", "freeze=vision",
                    "data.max_seq_length=512", f"paths.output_dir={tmp_path / 'out'}",
                    f"paths.demo_data_dir={tmp_path / 'demo'}"])
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "compare: 48 of 48 lines (100%) longer than data.max_seq_length=512 -- nothing left of it" in out
    assert "what trains" not in out and "data and model" not in out  # stopped before the model was built


def test_numbers_out_of_range_stop_the_launch_in_one_line_each(tmp_path):
    out = tmp_path / "out"
    r = run_launch([f"paths.output_dir={out}", "optimizer.lr=-1", "optimizer.betas=[0.9,1.5]",
                    "trainer.logging_steps=0", "model.downsample_ratio=0", "trainer.planner_mfu=1.5"])
    err = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in err
    for line in ("  - optimizer.lr: -1.0 must be > 0.0", "  - optimizer.betas[1]: 1.5 must be in [0.0, 1.0)",
                 "  - trainer.logging_steps: 0 must be >= 1", "  - model.downsample_ratio: 0.0 must be in (0.0, 1.0]",
                 "  - trainer.planner_mfu: 1.5 must be in (0.0, 1.0]"):
        assert line in err.splitlines(), line
    assert not out.exists()  # no run directory
