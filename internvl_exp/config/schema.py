"""Structured-config schema for the whole run.

Every config group is backed by a dataclass, so a typo (``optimizer.lrr=1``) or a wrong type
(``trainer.max_steps=abc``) fails when Hydra composes the config, before anything heavy is imported.
This module must stay light: no torch, no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class TinyModelConfig:
    """Shapes of the random-init tiny model (``model=tiny``)."""

    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 64
    patch_size: int = 8
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate_size: int = 128


@dataclass
class ModelConfig:
    name: str = MISSING
    # Family name in the parts registry (internvl_exp.models.registry): how parts map to modules.
    family: str = "internvl_hf"
    # "tiny": random init from `tiny`; "pretrained": load an HF-native checkpoint from `path`.
    source: str = "tiny"
    path: Optional[str] = None
    template: str = "internvl2_5"
    image_size: int = 64
    downsample_ratio: float = 0.5
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 6
    use_thumbnail: bool = True
    normalize_type: str = "imagenet"
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    # Stochastic depth on the ViT's residual branches (timm DropPath), linear from 0 (first layer) to this rate
    # (last layer); active in training only, and only on trainable vision layers unless drop_path_on_frozen.
    drop_path_rate: float = 0.0
    # Also drop paths in frozen vision layers (InternVL's official behaviour; needs freeze.frozen_mode=train).
    drop_path_on_frozen: bool = False
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DatasetSpec:
    """One entry of InternVL's meta JSON (same keys), usable inline in `data.datasets`."""

    annotation: str = MISSING
    root: str = ""
    repeat_time: float = 1.0
    data_augment: bool = False
    max_dynamic_patch: Optional[int] = None
    length: Optional[int] = None
    # Relative share of this dataset in a weighted mixture (set on every dataset or none; docs/data.md).
    weight: Optional[float] = None


@dataclass
class DataConfig:
    name: str = MISSING
    # A meta JSON in InternVL's format, and/or datasets given inline (inline entries win on name clashes).
    meta_path: Optional[str] = None
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    # Generate the demo datasets into paths.demo_data_dir first (deterministic, once).
    generate_demo: bool = False
    max_seq_length: int = 2048
    # What to do with samples longer than max_seq_length: drop (skip and count) or truncate whole turns.
    length_policy: str = "drop"
    # Bad annotation lines or unreadable media: strict (stop and list every problem) or skip (skip and count).
    on_error: str = "strict"
    system_message: Optional[str] = None
    seed: int = 0
    # Video samples: frames per video drawn uniformly in [min_num_frame, max_num_frame] (capped by the
    # frames available), picked from equal segments at random ("rand") or at their middle ("middle").
    min_num_frame: int = 8
    max_num_frame: int = 32
    frame_sampling: str = "rand"
    # Image resize kernel: "pil" (InternVL's own training pixels, bit for bit) or "torch" (torchvision's, =
    # transformers' GotOcr2ImageProcessor: faster, differs by up to ~13 uint8 levels on photos; docs/data.md).
    resize_backend: str = "pil"
    # Processes for the pre-flight scan (null: every core available); the scan runs once per machine.
    scan_workers: Optional[int] = None
    # Cache the pre-flight plan under paths.cache_dir, shared by ranks, reruns and sweep jobs (docs/data.md).
    plan_cache: bool = True


@dataclass
class LoraConfig:
    """LoRA on the parts whose mode is `lora` (docs/freeze.md)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Module names inside one LLM decoder layer / one ViT layer, e.g. [self_attn.q_proj, self_attn.v_proj];
    # null = the family's defaults (all attention and MLP projections).
    llm_targets: Optional[list[str]] = None
    vision_targets: Optional[list[str]] = None


@dataclass
class FreezeConfig:
    name: str = MISSING
    # Per-part training mode: frozen | full | lora (lora: vision and llm only).
    parts: dict[str, str] = field(
        default_factory=lambda: {"vision": "frozen", "projector": "full", "llm": "full", "lm_head": "full"}
    )
    # The LLM's input token embeddings (a sub-part of llm): frozen | full; null = follow llm (full when llm is
    # full, frozen when llm is frozen or lora). Tied to lm_head? Then both must have the same mode.
    embeddings: Optional[str] = None
    # Train the last N layers of an otherwise frozen ViT (needs parts.vision=frozen). N counts from the top:
    # 2 = the last two layers, unlike InternVL's `unfreeze_vit_layers` slice start.
    vit_last_n: Optional[int] = None
    # How frozen modules run in training: eval (no dropout / drop-path, deterministic) or train (InternVL's way).
    frozen_mode: str = "eval"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DeepSpeedConfig:
    name: str = MISSING
    stage: Optional[int] = None
    # The DeepSpeed JSON as a mapping ("auto" values are filled by the Trainer).
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    # Multiplies `lr` per part, e.g. {vision: 0.1}. Parts not listed use 1.0; `embeddings` defaults to llm's.
    part_lr_scale: dict[str, float] = field(default_factory=dict)
    # Layer-wise lr decay for the ViT: the last layer keeps the vision lr, each layer below is multiplied by this
    # factor once more (the patch/position embeddings once more than layer 0). null = off.
    vision_layer_decay: Optional[float] = None
    # No weight decay on embeddings (LLM token embeddings, ViT position embeddings / class token). Biases and
    # norm weights never get weight decay.
    no_decay_embeddings: bool = True
    # torch's fused AdamW kernel: null = use it when every trainable parameter is on a device that supports it.
    fused: Optional[bool] = None
    # warmup_stable_decay: the share of all steps spent decaying at the end.
    decay_ratio: float = 0.1
    # cosine_with_min_lr / warmup_stable_decay: the final lr as a fraction of the peak.
    min_lr_ratio: float = 0.0
    # Extra keyword arguments for the HF scheduler (e.g. {num_cycles: 0.5}); they win over the two above.
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    name: str = MISSING
    max_steps: int = -1
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    logging_steps: int = 10
    save_strategy: str = "no"
    save_steps: int = 500
    save_total_limit: Optional[int] = None
    dataloader_num_workers: int = 0
    bf16: bool = False
    # "auto": CPU when no accelerator is visible.
    device: str = "auto"
    activation_checkpointing: bool = False
    save_final: bool = True
    # Peak dense TFLOPS of one device, the MFU denominator. null: looked up from the device name
    # (internvl_exp/train/flops.py, bf16 dense tensor-core peaks); no MFU when unknown (e.g. CPU).
    peak_tflops: Optional[float] = None


@dataclass
class WandbConfig:
    project: str = "internvl-exp"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    mode: str = "offline"


@dataclass
class LoggerConfig:
    name: str = MISSING
    wandb: Optional[WandbConfig] = None


@dataclass
class LauncherConfig:
    name: str = MISSING
    nproc_per_node: int = 1


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING
    demo_data_dir: str = MISSING


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    freeze: FreezeConfig = MISSING
    deepspeed: DeepSpeedConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    launcher: LauncherConfig = MISSING
    paths: PathsConfig = MISSING
    experiment_name: str = "default"
    run_name: str = MISSING
    # The sweep's directory name under outputs/<experiment_name>/multirun/ (null for single runs).
    sweep_name: Optional[str] = None
    # The metrics.json key (dotted for nested) a job returns to the sweeper as its objective.
    optimized_metric: str = "final_loss"
    seed: int = 42


def register_configs(project_root: str | None = None) -> None:
    """Register the schema so `conf/config.yaml` can extend it (`defaults: [config_schema, ...]`),
    and the `${project_root:}` resolver (the folder of launch.py; the working directory otherwise)."""
    import os

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    root = os.path.abspath(project_root or os.getcwd())
    OmegaConf.register_new_resolver("project_root", lambda: root, replace=True)

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
