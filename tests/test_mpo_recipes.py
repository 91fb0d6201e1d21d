"""conf/experiment/*_mpo.yaml: OpenGVLab's 15 official MPO scripts (InternVL2.0, 2.5, 3.0) as recipes, checked
against the numbers transcribed in the team's MPO reference notes (section 8), not against the generator's reading
of the scripts. Each file names its script and the script line of every flag it maps."""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONF, compose


class M(NamedTuple):
    name: str
    preset: str
    template: str  # --conv_style
    lr: float
    gpus: int  # GPUS = BATCH_SIZE (per-device 1, no accumulation)
    max_seq_length: int
    ds_json: str
    drop_path: float
    liger: bool
    save_strategy: str
    script: str


S20 = "internvl_chat/shell/internvl2.0_mpo/preference_optimization/"
S25 = "internvl_chat/shell/internvl2.5_mpo/preference_optimization/"
S30 = "internvl_chat/shell/internvl3.0/mpo/"
ORACLE = [
    M("internvl2_8b_mpo", "internvl2_8b", "internlm2-chat", 5e-6, 256, 6144, "zero_stage1_config.json", 0.1, False, "no",
      S20 + "internvl2_8b_internlm2_7b_dynamic_res_mpo_full.sh"),
    M("internvl2_5_1b_mpo", "internvl2_5_1b", "internvl2_5", 1e-6, 256, 8192, "zero_stage1_config.json", 0.1, True, "no",
      S25 + "internvl2_5_1b_qwen2_5_0_5b_dynamic_res_mpo.sh"),
    M("internvl2_5_2b_mpo", "internvl2_5_2b", "internvl2_5", 1e-6, 256, 8192, "zero_stage1_config.json", 0.1, True, "no",
      S25 + "internvl2_5_2b_internlm2_5_1_8b_dynamic_res_mpo.sh"),
    M("internvl2_5_4b_mpo", "internvl2_5_4b", "internvl2_5", 1e-6, 256, 8192, "zero_stage1_config.json", 0.1, True, "no",
      S25 + "internvl2_5_4b_qwen2_5_3b_dynamic_res_mpo.sh"),
    M("internvl2_5_8b_mpo", "internvl2_5_8b", "internvl2_5", 1e-6, 256, 8192, "zero_stage1_config.json", 0.1, True, "no",
      S25 + "internvl2_5_8b_internlm2_5_7b_dynamic_res_mpo.sh"),
    M("internvl2_5_26b_mpo", "internvl2_5_26b", "internvl2_5", 1e-6, 256, 8192, "zero_stage3_config_70b.json", 0.4, True,
      "no", S25 + "internvl2_5_26b_internlm2_5_20b_dynamic_res_mpo.sh"),
    M("internvl2_5_38b_mpo", "internvl2_5_38b", "internvl2_5", 1e-6, 512, 8192, "zero_stage3_config_100b.json", 0.4, True,
      "steps", S25 + "internvl2_5_38b_qwen2_5_32b_dynamic_res_mpo.sh"),
    M("internvl2_5_78b_mpo", "internvl2_5_78b", "internvl2_5", 1e-6, 512, 8192, "zero_stage3_config_100b_1e8.json", 0.4,
      True, "steps", S25 + "internvl2_5_78b_qwen2_5_72b_dynamic_res_mpo.sh"),
    M("internvl3_1b_mpo", "internvl3_1b", "internvl2_5", 2e-7, 256, 12288, "zero_stage1_config.json", 0.1, True, "no",
      S30 + "internvl3_1b_mpo.sh"),
    M("internvl3_2b_mpo", "internvl3_2b", "internvl2_5", 2e-7, 256, 12288, "zero_stage1_config.json", 0.1, True, "no",
      S30 + "internvl3_2b_mpo.sh"),
    M("internvl3_8b_mpo", "internvl3_8b", "internvl2_5", 2e-7, 256, 12288, "zero_stage3_config_100b_1e8.json", 0.1, True,
      "no", S30 + "internvl3_8b_mpo.sh"),
    M("internvl3_9b_mpo", "internvl3_9b", "internvl2_5", 2e-7, 256, 12288, "zero_stage3_config_100b_1e8.json", 0.1, True,
      "no", S30 + "internvl3_9b_mpo.sh"),
    M("internvl3_14b_mpo", "internvl3_14b", "internvl2_5", 2e-7, 256, 12288, "zero_stage3_config_100b_1e8.json", 0.1,
      True, "no", S30 + "internvl3_14b_mpo.sh"),
    M("internvl3_38b_mpo", "internvl3_38b", "internvl2_5", 2e-7, 512, 8192, "zero_stage3_config_100b_1e7_offload.json",
      0.4, True, "steps", S30 + "internvl3_38b_mpo.sh"),
    M("internvl3_78b_mpo", "internvl3_78b", "internvl2_5", 2e-7, 512, 8192, "zero_stage3_config_100b_1e7_offload.json",
      0.4, True, "steps", S30 + "internvl3_78b_mpo.sh"),
]
# The DeepSpeed JSONs (reference notes section 8): our option, stage, buckets (sub_group/reduce/prefetch) and
# stage3_param_persistence_threshold, offload.
DS = {
    "zero_stage1_config.json": ("zero1", 1, None, None, False),
    "zero_stage3_config_70b.json": ("zero3", 3, 1e9, 1e5, False),
    "zero_stage3_config_100b.json": ("zero3", 3, 1e9, 1e4, False),
    "zero_stage3_config_100b_1e8.json": ("zero3", 3, 1e8, 1e4, False),
    "zero_stage3_config_100b_1e7_offload.json": ("zero3_offload", 3, 1e7, 1e4, True),
}


def _yaml(name: str) -> tuple[dict, str]:
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    return yaml.safe_load(text), text


def test_every_mpo_recipe_file_has_an_oracle_row_and_back() -> None:
    assert sorted(p.stem for p in (CONF / "experiment").glob("*_mpo.yaml")) == sorted(m.name for m in ORACLE)


@pytest.mark.parametrize("m", ORACLE, ids=[m.name for m in ORACLE])
def test_recipe_file_carries_its_scripts_numbers_and_sources(m: M) -> None:
    doc, text = _yaml(m.name)
    defaults = {k: v for d in doc["defaults"] for k, v in d.items()}
    option, stage, buckets, persistence, offload = DS[m.ds_json]
    assert defaults == {"override /model": m.preset, "override /data": "meta", "override /freeze": "full",
                        "override /deepspeed": option, "override /optimizer": "adamw_internvl",
                        "override /objective": "mpo", "override /logger": "tensorboard"}
    for group, option_name in defaults.items():  # every option exists in conf/
        assert (CONF / group.split("/")[1] / f"{option_name}.yaml").is_file(), (group, option_name)
    assert f"Source: OpenGVLab/InternVL@2410d1d {m.script}\n" in text
    assert doc["objective"] == {"beta": 0.1, "weights": {"sigmoid": 0.8, "bco_pair": 0.2}, "rpo_alpha": 1.0,
                                "label_smoothing": 0.0, "nll_normalisation": "token"}
    assert doc["model"]["template"] == m.template and doc["model"]["drop_path_rate"] == pytest.approx(m.drop_path)
    assert (doc["model"]["min_dynamic_patch"], doc["model"]["max_dynamic_patch"], doc["model"]["use_thumbnail"]) == (1, 12, True)
    assert doc["data"]["max_seq_length"] == m.max_seq_length
    opt, tr = doc["optimizer"], doc["trainer"]
    assert opt["lr"] == pytest.approx(m.lr) and (opt["weight_decay"], opt["warmup_ratio"]) == (0.05, 0.03)
    assert opt["scheduler"] == "cosine" and opt["max_grad_norm"] == 1.0
    assert (tr["global_batch_size"], tr["per_device_train_batch_size"], tr["num_train_epochs"]) == (m.gpus, 1, 1)
    assert tr["save_strategy"] == m.save_strategy and tr["save_total_limit"] == 100
    assert tr["bf16"] is True and tr["activation_checkpointing"] is True and tr["dataloader_num_workers"] == 8
    zero = (doc.get("deepspeed") or {}).get("config", {}).get("zero_optimization", {})
    base = yaml.safe_load((CONF / "deepspeed" / f"{option}.yaml").read_text())["config"]["zero_optimization"]
    merged = {**base, **zero}
    assert merged["stage"] == stage
    if stage == 3:
        assert merged["stage3_param_persistence_threshold"] == persistence
        assert merged["sub_group_size"] == merged["reduce_bucket_size"] == merged["stage3_prefetch_bucket_size"] == buckets
        assert ("offload_param" in merged) == offload == ("offload_optimizer" in merged)
    assert ("--use_liger True" in text) == m.liger
    # Every value a script sets names the script line it comes from: "--flag value (Lnn)".
    flag_comments = re.findall(r"# --(\w+)[^\n]*?\(L(\d+)", text)
    assert {f for f, _ in flag_comments} >= {"learning_rate", "max_seq_length", "drop_path_rate", "conv_style",
                                            "deepspeed", "loss_type", "rpo_alpha", "save_strategy"}


@pytest.mark.parametrize("m", ORACLE, ids=[m.name for m in ORACLE])
def test_recipe_composes(m: M, tmp_path) -> None:
    cfg = compose([f"experiment={m.name}", "data.meta_path=/data/meta.json"], tmp_path)
    c = OmegaConf.to_container(cfg, resolve=True)
    assert c["experiment_name"] == m.name and c["model"]["name"] == m.preset
    assert c["objective"]["kind"] == "mpo" and c["objective"]["rpo_alpha"] == 1.0
    assert c["objective"]["weights"] == {"sigmoid": 0.8, "bco_pair": 0.2}
    assert c["optimizer"]["lr"] == pytest.approx(m.lr) and c["data"]["max_seq_length"] == m.max_seq_length
    assert c["deepspeed"]["stage"] == DS[m.ds_json][1]
    assert c["freeze"]["parts"] == {"vision": "full", "projector": "full", "llm": "full", "lm_head": "full"}
