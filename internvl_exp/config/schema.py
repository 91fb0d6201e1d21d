"""Structured-config schema for the whole run.

Every config group is backed by a dataclass, so a typo (``optimizer.lrr=1``) or a wrong type
(``trainer.max_steps=abc``) fails when Hydra composes the config, before anything heavy is imported.
This module must stay light: no torch, no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

PART_MODES = ("frozen", "full", "lora")
PARTS = ("vision", "projector", "llm", "lm_head")


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
    drop_path_rate: float = 0.0
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


@dataclass
class FreezeConfig:
    name: str = MISSING
    # Per-part training mode: frozen | full | lora.
    parts: dict[str, str] = field(
        default_factory=lambda: {"vision": "frozen", "projector": "full", "llm": "full", "lm_head": "full"}
    )


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
    # Multiplies `lr` per part, e.g. {vision: 0.1}. Parts not listed use 1.0.
    part_lr_scale: dict[str, float] = field(default_factory=dict)


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
