"""Cross-group rules, checked right after composition and before any model or data is loaded.

Each rule names the config key(s) at fault and what to do instead. Light: no torch import.
"""

from __future__ import annotations

from typing import Any

from internvl_exp.config.arch_rules import random_init_refusal
from internvl_exp.config.batch import batch_problems
from internvl_exp.config.choices import PART_MODES, PARTS, PLANNED_TEMPLATES, TEMPLATE_NAMES
from internvl_exp.config.chunked_loss import CHUNK_SETTINGS
from internvl_exp.config.eval_settings import eval_problems
from internvl_exp.config.objective_rules import objective_problems
from internvl_exp.config.precision import precision_problems
from internvl_exp.config.recipe import recipe_gaps
from internvl_exp.config.resume_rules import resume_problems
from internvl_exp.config.schema import Config
from internvl_exp.config.slurm_rules import slurm_problems
from internvl_exp.config.strict import secret_problems, unknown_key_problems
from internvl_exp.config.world import planned_world_size
from internvl_exp.errors import ConfigError
from internvl_exp.redact import scrub

LOCAL_MODEL = "local"  # the preset that reads everything from model.path's config.json
WANDB_MODES = ("offline", "online", "disabled")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "warmup_stable_decay", "cosine_with_min_lr")


def config_problems(cfg: Config) -> list[str]:
    problems: list[str] = [*unknown_key_problems(cfg), *secret_problems(cfg)]  # config/strict.py
    gaps = recipe_gaps(cfg)
    if gaps:  # the rules below compare these values
        return problems + gaps
    parts = dict(cfg.freeze.parts)
    missing = [p for p in PARTS if p not in parts]
    unknown = [p for p in parts if p not in PARTS]
    if missing:
        problems.append(f"freeze.parts: missing part(s) {missing}; every part of {list(PARTS)} needs a mode")
    if unknown:
        problems.append(f"freeze.parts: unknown part(s) {unknown}; parts are {list(PARTS)}")
    for part, mode in parts.items():
        if mode not in PART_MODES:
            problems.append(f"freeze.parts.{part}: mode {mode!r} is not one of {list(PART_MODES)}")
    if parts and all(parts.get(p) == "frozen" for p in PARTS) and not (
        cfg.freeze.vit_last_n or cfg.freeze.embeddings == "full"
    ):
        problems.append("freeze.parts: every part is frozen, so nothing would train; set at least one part to full or lora")
    problems += _freeze_problems(cfg)
    problems += _model_problems(cfg.model)
    problems += precision_problems(cfg)  # config/precision.py
    if not 1 <= cfg.model.min_dynamic_patch <= cfg.model.max_dynamic_patch:
        problems.append("model.min_dynamic_patch/max_dynamic_patch: need 1 <= min_dynamic_patch <= max_dynamic_patch")
    if cfg.data.length_policy not in ("drop", "truncate"):
        problems.append(f"data.length_policy: {cfg.data.length_policy!r} is not 'drop' or 'truncate'")
    if not 0.0 <= cfg.data.max_drop_share <= 1.0:
        problems.append(f"data.max_drop_share: {cfg.data.max_drop_share} must be in [0, 1] (1 accepts any loss)")
    if cfg.data.on_error not in ("strict", "skip"):
        problems.append(f"data.on_error: {cfg.data.on_error!r} is not 'strict' or 'skip'")
    if cfg.data.name == "meta" and not cfg.data.meta_path:
        problems.append("data.meta_path: data=meta trains on your InternVL meta JSON; give its path: "
                        "data.meta_path=/path/to/meta.json (format: docs/data.md)")
    elif not cfg.data.meta_path and not cfg.data.datasets:
        problems.append("data: no datasets; set data.meta_path=<meta.json> or data.datasets")
    if cfg.data.max_seq_length <= 0:
        problems.append("data.max_seq_length must be > 0")
    problems += data_batching_problems(cfg)
    if cfg.data.scan_workers is not None and cfg.data.scan_workers < 1:
        problems.append(f"data.scan_workers: {cfg.data.scan_workers} must be >= 1 (or null for every core available)")
    if cfg.data.resize_backend not in ("pil", "torch"):
        problems.append(f"data.resize_backend: {cfg.data.resize_backend!r} is not 'pil' (InternVL's pixels) or 'torch' (fast)")
    if cfg.optimizer.scheduler not in SCHEDULERS:
        problems.append(f"optimizer.scheduler: {cfg.optimizer.scheduler!r} is not one of {list(SCHEDULERS)}")
    if not 0.0 <= cfg.optimizer.warmup_ratio < 1.0:
        problems.append("optimizer.warmup_ratio must be in [0, 1)")
    problems += _optimizer_problems(cfg)
    problems += _trainer_problems(cfg)
    problems += eval_problems(cfg)  # config/eval_settings.py
    problems += resume_problems(cfg.resume)
    problems += _deepspeed_problems(cfg)
    if cfg.trainer.device not in ("auto", "cpu", "cuda"):
        problems.append(f"trainer.device: {cfg.trainer.device!r} is not auto, cpu or cuda")
    if cfg.trainer.save_strategy not in ("no", "steps", "epoch"):
        problems.append(f"trainer.save_strategy: {cfg.trainer.save_strategy!r} is not no, steps or epoch")
    if cfg.logger.name == "wandb" and cfg.logger.wandb is None:
        problems.append("logger.wandb: logger=wandb needs a wandb block (project, mode, ...)")
    elif cfg.logger.name == "wandb" and cfg.logger.wandb.mode not in WANDB_MODES:
        problems.append(f"logger.wandb.mode: {cfg.logger.wandb.mode!r} is not one of {list(WANDB_MODES)} "
                        "(offline writes <run_dir>/wandb/ to upload later with `wandb sync`)")
    problems += _distributed_problems(cfg.distributed)
    problems += range_problems(cfg)
    problems += objective_problems(cfg)  # config/objective_rules.py
    return problems


# Numeric settings and the range each must fall in: (key, low, high, low inclusive, high inclusive, null allowed).
# Checked with the config, so a wrong number stops the launch in one line before torch sees it.
RANGES = (
    ("optimizer.lr", 0.0, None, False, False, False),
    ("optimizer.eps", 0.0, None, False, False, False),
    ("optimizer.betas[0]", 0.0, 1.0, True, False, False),
    ("optimizer.betas[1]", 0.0, 1.0, True, False, False),
    ("trainer.logging_steps", 1, None, True, False, False),
    ("trainer.save_steps", 1, None, True, False, False),
    ("trainer.save_total_limit", 1, None, True, False, True),
    ("trainer.dataloader_num_workers", 0, None, True, False, False),
    ("trainer.peak_tflops", 0.0, None, False, False, True),
    ("trainer.device_memory_gb", 0.0, None, False, False, True),
    ("trainer.planner_mfu", 0.0, 1.0, False, True, False),
    ("model.image_size", 0, None, False, False, False),
    ("model.downsample_ratio", 0.0, 1.0, False, True, False),
    ("data.min_num_frame", 1, None, True, False, False),
    ("data.max_num_frame", 1, None, True, False, False),
)


def _in_range(value: float, low: float | None, high: float | None, low_in: bool, high_in: bool) -> bool:
    if low is not None and (value < low or (value == low and not low_in)):
        return False
    return not (high is not None and (value > high or (value == high and not high_in)))


def range_problems(cfg: Config) -> list[str]:
    """One line per numeric setting outside its range (RANGES)."""
    from omegaconf import OmegaConf

    problems = []
    for key, low, high, low_in, high_in, nullable in RANGES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:  # null where the schema allows it (a non-Optional key cannot compose as null)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _in_range(value, low, high, low_in,
                                                                                             high_in):
            lo = "" if low is None else f"{'[' if low_in else '('}{low}"
            hi = "" if high is None else f"{high}{']' if high_in else ')'}"
            want = f"in {lo}, {hi}" if low is not None and high is not None else (
                f"{'>=' if low_in else '>'} {low}" if low is not None else f"{'<=' if high_in else '<'} {high}")
            problems.append(f"{key}: {value!r} must be {want}" + (" (or null)" if nullable else ""))
    d = cfg.data
    if d.min_num_frame > d.max_num_frame:
        problems.append(f"data.min_num_frame={d.min_num_frame} is above data.max_num_frame={d.max_num_frame}")
    return problems


DISTRIBUTED = ("single", "torchrun", "slurm")


def _distributed_problems(d: Any) -> list[str]:
    """distributed: one process in the job, torchrun or SLURM with numbers that make sense."""
    if d.name not in DISTRIBUTED:
        return [f"distributed: {d.name!r} is not one of {list(DISTRIBUTED)}"]
    if d.name == "slurm":
        return slurm_problems(d)
    problems = []
    nodes, node_rank, endpoint = d.nnodes, d.node_rank, d.rdzv_endpoint
    if d.name == "single" and (d.nproc_per_node != 1 or nodes != 1):
        problems.append("distributed.nproc_per_node/nnodes: distributed=single runs one process in the Hydra job; "
                        "use distributed=torchrun distributed.nproc_per_node=N for several")
    if d.nproc_per_node < 1 or nodes < 1:
        problems.append(f"distributed.nproc_per_node={d.nproc_per_node}, nnodes={nodes}: both must be >= 1")
    if not 0 <= node_rank < max(nodes, 1):
        problems.append(f"distributed.node_rank={node_rank} must be in [0, nnodes={nodes})")
    if nodes > 1 and not endpoint:
        problems.append(f"distributed.rdzv_endpoint: {nodes} nodes need the rendezvous HOST:PORT of node 0 "
                        "(the same on every node), e.g. distributed.rdzv_endpoint=node0:29500")
    return problems


def _freeze_problems(cfg: Config) -> list[str]:
    """freeze: LoRA only on the towers, vit_last_n on a frozen ViT, embeddings/frozen_mode values, LoRA settings;
    model: drop-path rate and where it applies."""
    fz, problems = cfg.freeze, []
    parts = dict(fz.parts)
    for part in ("projector", "lm_head"):
        if parts.get(part) == "lora":
            problems.append(f"freeze.parts.{part}: lora is only available for vision and llm; use full or frozen")
    if fz.embeddings not in (None, "frozen", "full"):
        problems.append(f"freeze.embeddings: {fz.embeddings!r} is not frozen, full or null (null follows llm)")
    if fz.frozen_mode not in ("eval", "train"):
        problems.append(f"freeze.frozen_mode: {fz.frozen_mode!r} is not eval or train")
    if fz.vit_last_n is not None:
        if fz.vit_last_n < 1:
            problems.append(f"freeze.vit_last_n: {fz.vit_last_n} must be >= 1 (or null to train no ViT layer)")
        elif parts.get("vision") != "frozen":
            problems.append(
                f"freeze.vit_last_n: unfreezes the last N layers of a frozen ViT, but freeze.parts.vision="
                f"{parts.get('vision')}; set freeze.parts.vision=frozen or freeze.vit_last_n=null"
            )
        elif (layers := cfg.model.arch.vision.num_hidden_layers) is not None and fz.vit_last_n > layers:
            problems.append(
                f"freeze.vit_last_n: {fz.vit_last_n} is more than the model's {layers} vision layers "
                "(model.arch.vision.num_hidden_layers)"
            )
    towers = {"llm_targets": "llm", "vision_targets": "vision"}
    if "lora" in parts.values():
        if fz.lora.r < 1:
            problems.append(f"freeze.lora.r: {fz.lora.r} must be >= 1")
        if fz.lora.alpha <= 0:
            problems.append(f"freeze.lora.alpha: {fz.lora.alpha} must be > 0")
        if not 0.0 <= fz.lora.dropout < 1.0:
            problems.append(f"freeze.lora.dropout: {fz.lora.dropout} must be in [0, 1)")
    for key, part in towers.items():
        targets = fz.lora[key]
        if targets is not None and parts.get(part) != "lora":
            problems.append(
                f"freeze.lora.{key} is set but freeze.parts.{part}={parts.get(part)}; "
                f"set freeze.parts.{part}=lora or freeze.lora.{key}=null"
            )
        elif targets is not None and len(targets) == 0:
            problems.append(f"freeze.lora.{key}: empty list; use null for the family's default targets")
    if not 0.0 <= cfg.model.drop_path_rate < 1.0:
        problems.append(f"model.drop_path_rate: {cfg.model.drop_path_rate} must be in [0, 1)")
    if cfg.model.drop_path_on_frozen and fz.frozen_mode != "train":
        problems.append(
            "model.drop_path_on_frozen=true has no effect while frozen layers run in eval mode; "
            "set freeze.frozen_mode=train as well (InternVL's behaviour) or drop_path_on_frozen=false"
        )
    return problems


def _model_problems(m: Any) -> list[str]:
    """model: one key picks the weights (docs/models.md); random weights only when asked for, by name."""
    problems = []
    has_hub = bool(m.hub.original or m.hub.native)
    if m.variant is not None and m.variant not in m.variants:
        available = sorted(m.variants) or "none"
        problems.append(f"model.variant: {m.variant!r} is not available for model={m.name} (variants: {available}); "
                        "use one of them or model.variant=null")
    if m.name == LOCAL_MODEL:
        if not m.path:
            problems.append("model.path: model=local loads the InternVL checkpoint in model.path; set model.path=DIR")
        if m.random_init:
            problems.append("model.random_init: model=local has no architecture of its own (it reads model.path's "
                            "config.json); pick the preset of that checkpoint for random init")
    elif not has_hub and not m.random_init and not m.path:
        problems.append(f"model.random_init: model={m.name} names no weights (no model.hub ids); set "
                        "model.random_init=true for a random model or model.path=DIR for a checkpoint")
    elif not has_hub and m.random_init and m.path:
        # The trap this guards against: `model.path=DIR` on the default model=tiny silently training a random model.
        problems.append(f"model.path: model={m.name} is a random model and would ignore model.path={m.path}; to train "
                        "that checkpoint use model=local model.path=DIR (or its preset, e.g. model=internvl2_8b "
                        "model.path=DIR)")
    if m.random_init and m.name != LOCAL_MODEL:
        refusal = random_init_refusal(m)
        if refusal:
            problems.append(refusal)
    if m.template is None:
        problems.append(f"model.template: not set for model={m.name}; set it to the checkpoint's conversation "
                        f"template, one of {list(TEMPLATE_NAMES)}")
    elif m.template not in TEMPLATE_NAMES:
        hint = (" (the official template of this model, not implemented yet; set model.template to one of these "
                "to train with another)") if m.template in PLANNED_TEMPLATES else ""
        problems.append(f"model.template: {m.template!r} is not one of {list(TEMPLATE_NAMES)}{hint}")
    if m.arch.text.model_type == "gpt_oss" and m.attn_implementation == "sdpa":
        problems.append("model.attn_implementation: transformers' GPT-OSS has no sdpa attention (attention sinks); "
                        "use eager, or a flash-attention kernel on GPU")
    if m.patch_size <= 0 or m.image_size % m.patch_size:
        problems.append(f"model.image_size/patch_size: {m.image_size} is not a multiple of {m.patch_size}")
    return problems


def _optimizer_problems(cfg: Config) -> list[str]:
    opt, problems = cfg.optimizer, []
    for part, scale in opt.part_lr_scale.items():
        if part not in (*PARTS, "embeddings"):
            problems.append(f"optimizer.part_lr_scale.{part}: unknown part; parts are {[*PARTS, 'embeddings']}")
        elif scale < 0:
            problems.append(f"optimizer.part_lr_scale.{part}: {scale} must be >= 0")
    if opt.vision_layer_decay is not None and not 0.0 < opt.vision_layer_decay <= 1.0:
        problems.append(f"optimizer.vision_layer_decay: {opt.vision_layer_decay} must be in (0, 1] (or null: off)")
    if opt.weight_decay < 0:
        problems.append(f"optimizer.weight_decay: {opt.weight_decay} must be >= 0")
    if opt.max_grad_norm < 0:
        problems.append(f"optimizer.max_grad_norm: {opt.max_grad_norm} must be >= 0 (0 turns clipping off)")
    if not 0.0 <= opt.min_lr_ratio <= 1.0:
        problems.append(f"optimizer.min_lr_ratio: {opt.min_lr_ratio} must be in [0, 1]")
    if not 0.0 < opt.decay_ratio <= 1.0:
        problems.append(f"optimizer.decay_ratio: {opt.decay_ratio} must be in (0, 1]")
    elif opt.scheduler == "warmup_stable_decay" and opt.warmup_ratio + opt.decay_ratio > 1.0:
        problems.append(
            f"optimizer.warmup_ratio + optimizer.decay_ratio = {opt.warmup_ratio + opt.decay_ratio:g} > 1: "
            "warmup_stable_decay has no room for its phases; lower one of them"
        )
    return problems


def _trainer_problems(cfg: Config) -> list[str]:
    """trainer: epochs or a step cap, and a batch that splits evenly over the planned processes."""
    t, problems = cfg.trainer, []
    if t.max_steps is not None and t.max_steps <= 0:
        problems.append(f"trainer.max_steps: {t.max_steps} must be > 0; use trainer.max_steps=null to train "
                        "trainer.num_train_epochs epochs")
    if t.max_steps is None and t.num_train_epochs <= 0:
        problems.append(f"trainer.num_train_epochs: {t.num_train_epochs} must be > 0 (or set trainer.max_steps)")
    if str(t.chunked_loss).strip().lower() not in CHUNK_SETTINGS:
        problems.append(f"trainer.chunked_loss: {t.chunked_loss!r} is not one of auto, true, false")
    return problems + batch_problems(t, planned_world_size(cfg.distributed))


# ZeRO stages, and the stages that can offload each kind of state (DeepSpeed: parameters need ZeRO-3).
ZERO_STAGES = (0, 1, 2, 3)
OFFLOAD_STAGES = {"offload_optimizer": (1, 2, 3), "offload_param": (3,)}


def _deepspeed_problems(cfg: Config) -> list[str]:
    """deepspeed: a stage comes with its JSON and the JSON's own stage agrees; offload only where it exists."""
    ds, problems = cfg.deepspeed, []
    config = ds.config or {}
    if ds.stage is None:
        if config:
            problems.append("deepspeed.config is set but deepspeed.stage is null, so it would be ignored; "
                            "choose a stage (deepspeed=zero1|zero2|zero3) or deepspeed=none")
        return problems
    if ds.stage not in ZERO_STAGES:
        return [f"deepspeed.stage: {ds.stage} is not a ZeRO stage {list(ZERO_STAGES)}"]
    zero = config.get("zero_optimization")
    if not zero:
        return [f"deepspeed.stage={ds.stage} has no deepspeed.config.zero_optimization (the DeepSpeed JSON); "
                "choose deepspeed=zero1|zero2|zero3 (they carry InternVL's JSONs) or give the config"]
    if zero.get("stage") != ds.stage:
        problems.append(f"deepspeed.config.zero_optimization.stage={zero.get('stage')} disagrees with "
                        f"deepspeed.stage={ds.stage}; set both to the same stage")
    for key, stages in OFFLOAD_STAGES.items():
        offload = zero.get(key)
        if offload and offload.get("device", "none") != "none" and ds.stage not in stages:
            allowed = " or ".join(", ".join(map(str, stages)).rsplit(", ", 1))
            problems.append(f"deepspeed.config.zero_optimization.{key}: DeepSpeed offloads {key.split('_')[1]} "
                            f"state only under ZeRO stage {allowed}, not stage {ds.stage}; remove {key} or use "
                            "deepspeed=zero3_offload")
    return problems


def validate(cfg: Config) -> None:
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(scrub("invalid configuration:\n  - " + "\n  - ".join(problems)))


def data_batching_problems(cfg: Config) -> list[str]:
    """Packing, loss reduction and length grouping (data/packing.py, train/recipe/loss.py)."""
    d, problems = cfg.data, []
    if d.loss_reduction not in ("token", "sample", "square"):
        problems.append(f"data.loss_reduction: {d.loss_reduction!r} is not token, sample or square")
    p = d.packing
    if p.enabled:
        if p.max_packed_tokens < d.max_seq_length:
            problems.append(f"data.packing.max_packed_tokens={p.max_packed_tokens} is below data.max_seq_length="
                            f"{d.max_seq_length}; raise it so every sample fits in a pack whole")
        if p.max_tiles < 1 or p.buffer_size < 1:
            problems.append("data.packing.max_tiles and data.packing.buffer_size must be >= 1")
        if d.group_by_length:
            problems.append("data.group_by_length and data.packing.enabled both set; packing already groups "
                            "lengths: turn one off")
    if cfg.model.attn_implementation not in ("sdpa", "eager", "flash_attention_2", "flash_attention_3"):
        problems.append(f"model.attn_implementation: {cfg.model.attn_implementation!r} is not sdpa, eager, "
                        "flash_attention_2 or flash_attention_3")
    return problems
