"""conf/deepspeed/zero*.yaml mirror OpenGVLab's DeepSpeed JSONs, and inconsistent DeepSpeed settings fail validation."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf

from conftest import compose

# The oracle: OpenGVLab/InternVL@2410d1d internvl_chat/zero_stage*_config*.json, transcribed by hand.
_SHARED = {
    "fp16": {"enabled": "auto", "auto_cast": True, "loss_scale": 0, "initial_scale_power": 32,
             "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": "auto"}},
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
}
_STAGE3 = {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
           "reduce_bucket_size": 1e9, "stage3_prefetch_bucket_size": 1e9, "stage3_param_persistence_threshold": 1e7,
           "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
           "stage3_gather_16bit_weights_on_model_save": True}
OFFICIAL = {
    "zero_stage1_config.json": {**_SHARED, "wall_clock_breakdown": True, "zero_optimization": {
        "stage": 1, "allgather_partitions": True, "allgather_bucket_size": 1e9, "overlap_comm": True,
        "reduce_scatter": True, "reduce_bucket_size": 1e9, "contiguous_gradients": True}},
    "zero_stage2_config.json": {**_SHARED, "wall_clock_breakdown": False, "zero_optimization": {
        "stage": 2, "allgather_partitions": True, "allgather_bucket_size": 1e8, "overlap_comm": True,
        "reduce_scatter": True, "reduce_bucket_size": 1e8, "contiguous_gradients": True}},
    "zero_stage3_config.json": {**_SHARED, "wall_clock_breakdown": True, "zero_optimization": _STAGE3},
    "zero_stage3_config_100b_1e7_offload.json": {**_SHARED, "wall_clock_breakdown": True, "zero_optimization": {
        "stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1e7,
        "reduce_bucket_size": 1e7, "stage3_prefetch_bucket_size": 1e7, "stage3_param_persistence_threshold": 1e4,
        "stage3_max_live_parameters": 1e8, "stage3_max_reuse_distance": 1e8,
        "stage3_gather_16bit_weights_on_model_save": True,
        "offload_param": {"device": "cpu", "pin_memory": True},
        "offload_optimizer": {"device": "cpu", "pin_memory": True}}},
}


def _without_optimizer(official: dict) -> dict:
    # Our options leave the optimizer block out on purpose: DeepSpeed then steps our AdamW and its groups.
    out = copy.deepcopy(official)
    del out["optimizer"]
    return out


def _zero2_offload() -> dict:
    # No official JSON: stage 2 plus the offload_optimizer block of the official offload JSON.
    out = _without_optimizer(OFFICIAL["zero_stage2_config.json"])
    out["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return out


@pytest.mark.parametrize("option,stage,expected", [
    ("zero1", 1, _without_optimizer(OFFICIAL["zero_stage1_config.json"])),
    ("zero2", 2, _without_optimizer(OFFICIAL["zero_stage2_config.json"])),
    ("zero3", 3, _without_optimizer(OFFICIAL["zero_stage3_config.json"])),
    ("zero3_offload", 3, _without_optimizer(OFFICIAL["zero_stage3_config_100b_1e7_offload.json"])),
    ("zero2_offload", 2, _zero2_offload()),
])
def test_options_mirror_the_official_json(option, stage, expected, tmp_path):
    from internvl_exp.config.validate import validate

    cfg = compose([f"deepspeed={option}"], tmp_path)
    assert cfg.deepspeed.name == option and cfg.deepspeed.stage == stage
    config = OmegaConf.to_container(cfg.deepspeed.config, resolve=True)
    assert config == expected  # 1e9 == 1000000000: the YAML writes whole numbers, DeepSpeed wants ints
    assert "optimizer" not in config and "scheduler" not in config
    validate(cfg)


@pytest.mark.parametrize("overrides,key", [
    (["deepspeed.stage=3"], "deepspeed.stage=3 has no deepspeed.config.zero_optimization"),
    (["deepspeed=zero2", "deepspeed.stage=null"], "deepspeed.config is set but deepspeed.stage is null"),
    (["deepspeed=zero2", "deepspeed.stage=3"], "zero_optimization.stage=2 disagrees with deepspeed.stage=3"),
    (["deepspeed=zero2", "+deepspeed.config.zero_optimization.offload_param={device: cpu}"],
     "zero_optimization.offload_param: DeepSpeed offloads param state only under ZeRO stage 3, not stage 2"),
    (["deepspeed=zero1", "deepspeed.stage=0", "deepspeed.config.zero_optimization.stage=0",
      "+deepspeed.config.zero_optimization.offload_optimizer={device: cpu}"],
     "zero_optimization.offload_optimizer: DeepSpeed offloads optimizer state only under ZeRO stage 1, 2 or 3"),
    (["deepspeed=zero1", "deepspeed.stage=4"], "deepspeed.stage: 4 is not a ZeRO stage"),
])
def test_inconsistent_deepspeed_settings_fail(overrides, key, tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    with pytest.raises(ConfigError) as e:
        validate(compose(overrides, tmp_path))
    assert key in str(e.value)


def test_offload_device_none_is_not_an_offload(tmp_path):
    from internvl_exp.config.validate import validate

    validate(compose(["deepspeed=zero2", "+deepspeed.config.zero_optimization.offload_param={device: none}"], tmp_path))
