"""conf/experiment/: OpenGVLab's 2nd-stage fine-tuning scripts as recipes. Each composes with its script's numbers,
derives the script's accumulation at the script's GPU count, and fails clearly without data.meta_path."""

from __future__ import annotations

import subprocess
import sys
from typing import NamedTuple

import pytest
from omegaconf import OmegaConf

from conftest import CONF, ROOT, compose


class R(NamedTuple):
    name: str
    lr: float
    wd: float
    drop_path: float
    max_seq_length: int
    max_tiles: int
    template: str        # --conv_style
    zero_stage: int
    persistence: float | None  # stage3_param_persistence_threshold when the script uses the _34b/_100b JSON
    global_batch: int    # BATCH_SIZE
    per_device: int      # PER_DEVICE_BATCH_SIZE
    gpus: int            # GPUS
    accumulation: int    # the script's "# gradient accumulation steps: N" at GPUS
    lora_r: int          # --use_llm_lora (0: full fine-tune)


# The oracle, transcribed from OpenGVLab/InternVL@2410d1d internvl_chat/shell/internvl{2.0,2.5,3.0}/2nd_finetune/
# <name>_dynamic_res_2nd_finetune_{full,lora}.sh.
RECIPES = [
    R('internvl2_1b_finetune_full', 4e-5, 0.01, 0.1, 4096, 6, 'Hermes-2', 1, None, 128, 4, 8, 4, 0),  # internvl2_1b_qwen2_0_5b_full.sh
    R('internvl2_1b_finetune_lora', 4e-5, 0.01, 0.0, 4096, 6, 'Hermes-2', 1, None, 16, 4, 2, 2, 16),  # internvl2_1b_qwen2_0_5b_lora.sh
    R('internvl2_2b_finetune_full', 4e-5, 0.01, 0.1, 4096, 6, 'internlm2-chat', 1, None, 128, 4, 8, 4, 0),  # internvl2_2b_internlm2_1_8b_full.sh
    R('internvl2_2b_finetune_lora', 4e-5, 0.01, 0.0, 4096, 6, 'internlm2-chat', 1, None, 16, 4, 2, 2, 16),  # internvl2_2b_internlm2_1_8b_lora.sh
    R('internvl2_4b_finetune_full', 4e-5, 0.01, 0.1, 4096, 6, 'phi3-chat', 1, None, 128, 4, 8, 4, 0),  # internvl2_4b_phi3_3_8b_full.sh
    R('internvl2_4b_finetune_lora', 4e-5, 0.01, 0.0, 4096, 6, 'phi3-chat', 1, None, 16, 4, 2, 2, 16),  # internvl2_4b_phi3_3_8b_lora.sh
    R('internvl2_8b_finetune_full', 4e-5, 0.05, 0.1, 4096, 6, 'internlm2-chat', 1, None, 128, 4, 8, 4, 0),  # internvl2_8b_internlm2_7b_full.sh
    R('internvl2_8b_finetune_lora', 4e-5, 0.05, 0.0, 4096, 6, 'internlm2-chat', 1, None, 16, 4, 2, 2, 16),  # internvl2_8b_internlm2_7b_lora.sh
    R('internvl2_26b_finetune_full', 2e-5, 0.05, 0.4, 4096, 6, 'internlm2-chat', 3, None, 128, 2, 8, 8, 0),  # internvl2_26b_internlm2_20b_full.sh
    R('internvl2_26b_finetune_lora', 2e-5, 0.05, 0.0, 4096, 6, 'internlm2-chat', 3, None, 16, 2, 2, 4, 16),  # internvl2_26b_internlm2_20b_lora.sh
    R('internvl2_40b_finetune_full', 2e-5, 0.05, 0.4, 4096, 6, 'Hermes-2', 3, 1e5, 128, 2, 16, 4, 0),  # internvl2_40b_hermes2_yi_34b_full.sh
    R('internvl2_40b_finetune_lora', 2e-5, 0.05, 0.0, 4096, 6, 'Hermes-2', 3, 1e5, 16, 2, 2, 4, 16),  # internvl2_40b_hermes2_yi_34b_lora.sh
    R('internvl2_76b_finetune_full', 2e-5, 0.05, 0.4, 4096, 6, 'internlm2-chat', 3, 1e4, 128, 1, 32, 4, 0),  # internvl2_76b_hermes2_llama3_70b_full.sh
    R('internvl2_76b_finetune_lora', 2e-5, 0.05, 0.0, 4096, 6, 'internlm2-chat', 3, 1e4, 16, 1, 8, 2, 16),  # internvl2_76b_hermes2_llama3_70b_lora.sh
    R('internvl2_5_1b_finetune_full', 4e-5, 0.01, 0.1, 8192, 6, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl2_5_1b_full.sh
    R('internvl2_5_1b_finetune_lora', 4e-5, 0.01, 0.0, 8192, 6, 'internvl2_5', 1, None, 16, 4, 2, 2, 16),  # internvl2_5_1b_lora.sh
    R('internvl2_5_2b_finetune_full', 4e-5, 0.01, 0.1, 8192, 6, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl2_5_2b_full.sh
    R('internvl2_5_2b_finetune_lora', 4e-5, 0.01, 0.0, 8192, 6, 'internvl2_5', 1, None, 16, 4, 2, 2, 16),  # internvl2_5_2b_lora.sh
    R('internvl2_5_4b_finetune_full', 4e-5, 0.01, 0.1, 8192, 6, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl2_5_4b_full.sh
    R('internvl2_5_4b_finetune_lora', 4e-5, 0.01, 0.0, 8192, 6, 'internvl2_5', 1, None, 16, 4, 2, 2, 16),  # internvl2_5_4b_lora.sh
    R('internvl2_5_8b_finetune_full', 4e-5, 0.05, 0.1, 8192, 6, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl2_5_8b_full.sh
    R('internvl2_5_8b_finetune_lora', 4e-5, 0.05, 0.0, 8192, 6, 'internvl2_5', 1, None, 16, 4, 2, 2, 16),  # internvl2_5_8b_lora.sh
    R('internvl2_5_26b_finetune_full', 2e-5, 0.05, 0.4, 8192, 6, 'internvl2_5', 3, None, 128, 2, 8, 8, 0),  # internvl2_5_26b_full.sh
    R('internvl2_5_26b_finetune_lora', 2e-5, 0.05, 0.0, 8192, 6, 'internvl2_5', 3, None, 16, 2, 2, 4, 16),  # internvl2_5_26b_lora.sh
    R('internvl2_5_38b_finetune_full', 2e-5, 0.05, 0.4, 8192, 6, 'internvl2_5', 3, 1e5, 128, 2, 16, 4, 0),  # internvl2_5_38b_full.sh
    R('internvl2_5_38b_finetune_lora', 2e-5, 0.05, 0.0, 8192, 6, 'internvl2_5', 3, 1e5, 16, 2, 2, 4, 16),  # internvl2_5_38b_lora.sh
    R('internvl2_5_78b_finetune_full', 2e-5, 0.05, 0.4, 8192, 6, 'internvl2_5', 3, 1e4, 128, 1, 32, 4, 0),  # internvl2_5_78b_full.sh
    R('internvl2_5_78b_finetune_lora', 2e-5, 0.05, 0.0, 8192, 6, 'internvl2_5', 3, 1e4, 16, 1, 8, 2, 16),  # internvl2_5_78b_lora.sh
    R('internvl3_1b_finetune_full', 1e-5, 0.05, 0.0, 16384, 12, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl3_1b_full.sh
    R('internvl3_2b_finetune_full', 2e-5, 0.05, 0.0, 16384, 12, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl3_2b_full.sh
    R('internvl3_8b_finetune_full', 2e-5, 0.05, 0.0, 16384, 12, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl3_8b_full.sh
    R('internvl3_9b_finetune_full', 2e-5, 0.05, 0.0, 16384, 12, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl3_9b_full.sh
    R('internvl3_14b_finetune_full', 2e-5, 0.05, 0.1, 16384, 12, 'internvl2_5', 1, None, 128, 4, 8, 4, 0),  # internvl3_14b_full.sh
    R('internvl3_38b_finetune_full', 2e-5, 0.05, 0.2, 16384, 12, 'internvl2_5', 3, 1e5, 128, 2, 16, 4, 0),  # internvl3_38b_full.sh
    R('internvl3_78b_finetune_full', 2e-5, 0.05, 0.4, 16384, 12, 'internvl2_5', 3, 1e4, 128, 2, 32, 2, 0),  # internvl3_78b_full.sh
]
BY_NAME = {r.name: r for r in RECIPES}
META = "data.meta_path=/data/meta.json"


def _plain(cfg, nproc: int):
    """A resolved copy of cfg planned for `nproc` processes."""
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    plain.distributed = {**plain.distributed, "name": "torchrun", "nproc_per_node": nproc, "nnodes": 1}
    return plain


def test_every_recipe_file_has_an_oracle_row_and_back():
    # The MPO recipes (*_mpo.yaml) have their own oracle: tests/test_mpo_recipes.py.
    assert sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.endswith("_mpo")) == sorted(BY_NAME)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_recipe_composes_with_its_scripts_numbers(recipe, tmp_path, monkeypatch):
    from internvl_exp.config.validate import _deepspeed_problems, _trainer_problems
    from internvl_exp.config.batch import accumulation_steps

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = compose([f"experiment={recipe.name}", META], tmp_path)
    c = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert c["experiment_name"] == recipe.name
    assert c["model"]["name"] == recipe.name.rsplit("_finetune_", 1)[0]
    assert c["data"]["name"] == "meta" and c["data"]["meta_path"] == "/data/meta.json"
    opt, tr, model, ds = c["optimizer"], c["trainer"], c["model"], c["deepspeed"]
    assert opt["lr"] == pytest.approx(recipe.lr) and opt["weight_decay"] == pytest.approx(recipe.wd)
    assert opt["warmup_ratio"] == pytest.approx(0.03) and opt["scheduler"] == "cosine"
    assert tr["num_train_epochs"] == 1 and tr["max_steps"] is None
    assert tr["bf16"] is True and tr["activation_checkpointing"] is True
    assert c["data"]["max_seq_length"] == recipe.max_seq_length
    assert model["max_dynamic_patch"] == recipe.max_tiles and model["min_dynamic_patch"] == 1
    assert model["use_thumbnail"] is True and model["template"] == recipe.template
    assert model["drop_path_rate"] == pytest.approx(recipe.drop_path)
    # The official freeze_backbone leaves the ViT in train mode, so drop-path also acts on the frozen ViT.
    assert model["drop_path_on_frozen"] is True and c["freeze"]["frozen_mode"] == "train"
    assert ds["stage"] == recipe.zero_stage == ds["config"]["zero_optimization"]["stage"]
    persistence = ds["config"]["zero_optimization"].get("stage3_param_persistence_threshold")
    assert persistence == (recipe.persistence or (1e7 if recipe.zero_stage == 3 else None))
    if recipe.lora_r:
        assert c["freeze"]["parts"] == {"vision": "frozen", "projector": "frozen", "llm": "lora", "lm_head": "frozen"}
        assert c["freeze"]["lora"]["r"] == recipe.lora_r and c["freeze"]["lora"]["alpha"] == 2 * recipe.lora_r
        assert c["freeze"]["lora"]["dropout"] == pytest.approx(0.05)
    else:
        assert c["freeze"]["parts"] == {"vision": "frozen", "projector": "full", "llm": "full", "lm_head": "full"}
    assert tr["global_batch_size"] == recipe.global_batch and tr["per_device_train_batch_size"] == recipe.per_device
    # The script's own accumulation at its own GPU count, and the trainer/DeepSpeed rules pass there.
    planned = _plain(cfg, recipe.gpus)
    assert accumulation_steps(planned.trainer, recipe.gpus) == recipe.accumulation
    assert _trainer_problems(planned) == [] and _deepspeed_problems(planned) == []


@pytest.mark.parametrize("world,accumulation", [(1, 32), (8, 4), (16, 2), (32, 1)])
def test_headline_recipe_keeps_its_global_batch_at_any_world_size(world, accumulation, tmp_path, monkeypatch):
    from internvl_exp.config.validate import validate
    from internvl_exp.config.batch import accumulation_steps

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = _plain(compose(["experiment=internvl2_8b_finetune_full", META], tmp_path), world)
    assert accumulation_steps(cfg.trainer, world) == accumulation  # 128 = 4 per device x world x accumulation
    validate(cfg)


@pytest.mark.parametrize("recipe,world", [("internvl2_8b_finetune_full", 64), ("internvl2_8b_finetune_lora", 8),
                                          ("internvl2_8b_finetune_lora", 16), ("internvl2_76b_finetune_full", 3)])
def test_a_world_size_that_does_not_divide_the_global_batch_fails(recipe, world, tmp_path, monkeypatch):
    from internvl_exp.config.validate import ConfigError, validate

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    r = BY_NAME[recipe]
    with pytest.raises(ConfigError) as e:
        validate(_plain(compose([f"experiment={recipe}", META], tmp_path), world))
    msg = str(e.value)
    assert f"trainer.global_batch_size={r.global_batch}" in msg
    assert f"trainer.per_device_train_batch_size={r.per_device} x {world} process(es)" in msg


def test_lora_recipe_at_the_scripts_two_gpus(tmp_path, monkeypatch):
    from internvl_exp.config.batch import accumulation_steps

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = compose(["experiment=internvl2_8b_finetune_lora", META], tmp_path)
    assert cfg.trainer.global_batch_size == 16 and cfg.freeze.lora.r == 16
    assert [accumulation_steps(cfg.trainer, w) for w in (1, 2, 4)] == [4, 2, 1]


def test_recipe_without_meta_path_fails_naming_the_key(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    with pytest.raises(ConfigError) as e:
        validate(compose(["experiment=internvl2_8b_finetune_full"], tmp_path))
    assert "data.meta_path=/path/to/meta.json" in str(e.value)


def test_recipe_meta_path_error_through_launch_has_no_traceback(tmp_path):
    from conftest import run_launch

    res = run_launch(["experiment=internvl2_8b_finetune_full", f"paths.output_dir={tmp_path}"])
    assert res.returncode != 0
    assert "data.meta_path" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr


_PROBE = """
import runpy, sys
sys.argv = ["launch.py", *sys.argv[1:]]
try:
    runpy.run_path({launch!r}, run_name="__main__")
except SystemExit:
    pass
heavy = [m for m in ("torch", "transformers", "deepspeed", "peft", "wandb") if m in sys.modules]
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def test_cfg_job_of_a_recipe_imports_no_torch():
    probe = _PROBE.format(launch=str(ROOT / "launch.py"))
    res = subprocess.run([sys.executable, "-c", probe, "experiment=internvl2_8b_finetune_full", META,
                          "--cfg", "job", "--resolve"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr.rstrip().endswith("HEAVY="), res.stderr
    cfg = OmegaConf.create(res.stdout)
    assert cfg.experiment_name == "internvl2_8b_finetune_full" and cfg.model.name == "internvl2_8b"
    assert cfg.deepspeed.name == "zero1" and cfg.trainer.global_batch_size == 128


@pytest.mark.slow
def test_a_recipe_trains_through_launch_with_the_tiny_model(tmp_path, demo_dir):
    """The LoRA recipe on the tiny model (model=tiny wins over the recipe's preset), CPU, no DeepSpeed: the real
    Trainer takes 16 samples per optimiser step (4 per device x 4 derived accumulation steps x 1 process)."""
    import json

    from conftest import run_launch

    res = run_launch(["experiment=internvl2_8b_finetune_lora", "model=tiny", "deepspeed=none", "trainer.bf16=false",
                      "trainer.max_steps=2", "trainer.dataloader_num_workers=0", "logger=none", "run_name=r",
                      "trainer.save_final=false", f"data.meta_path={demo_dir / 'meta.json'}",
                      f"paths.output_dir={tmp_path}", f"paths.demo_data_dir={demo_dir}"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((tmp_path / "internvl2_8b_finetune_lora" / "r" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    assert metrics["samples"] == 32 and metrics["epochs"] == pytest.approx(32 / 192)
    assert metrics["trainable_parameters"]["llm"]["trainable"] > 0
    assert metrics["trainable_parameters"]["vision"]["trainable"] == 0
    assert "global batch 16 = 4 per device x 1 process(es) x 4 accumulation step(s)" in res.stdout + res.stderr
