"""The data path from a composed config: demo generation, dataset entries, settings, pre-flight scan.

Shared by training (`train.run.run`) and the data check tool, so both see exactly the same
samples for the same config.
"""

from __future__ import annotations

from typing import Any

from internvl_exp.config.schema import Config
from internvl_exp.data.dataset import DataReport, SupervisedDataset, build_dataset
from internvl_exp.data.demo import generate_demo_data
from internvl_exp.data.planner import ImageSettings
from internvl_exp.data.sources import DatasetEntry, load_entries


def image_settings(cfg: Config, num_tokens_per_tile: int) -> ImageSettings:
    return ImageSettings(
        tile_size=cfg.model.image_size,
        tokens_per_tile=num_tokens_per_tile,
        min_dynamic_patch=cfg.model.min_dynamic_patch,
        max_dynamic_patch=cfg.model.max_dynamic_patch,
        use_thumbnail=cfg.model.use_thumbnail,
        normalize_type=cfg.model.normalize_type,
        min_num_frame=cfg.data.min_num_frame,
        max_num_frame=cfg.data.max_num_frame,
        frame_sampling=cfg.data.frame_sampling,
        resize_backend=cfg.data.resize_backend,
        exif_transpose=cfg.data.exif_transpose,
    )


def dataset_entries(cfg: Config) -> list[DatasetEntry]:
    """Generate the demo data if the config asks for it, then read the meta JSON / inline datasets."""
    from omegaconf import OmegaConf

    if cfg.data.generate_demo:
        generate_demo_data(cfg.paths.demo_data_dir)
    inline = OmegaConf.to_container(cfg.data.datasets, resolve=True) if cfg.data.datasets else None
    return load_entries(cfg.data.meta_path, inline)


def scan_options(cfg: Config) -> dict[str, Any]:
    """How the pre-flight scan runs: its worker processes and its cache (shared by every process of a machine)."""
    return {"scan_workers": cfg.data.scan_workers, "cache_dir": cfg.paths.cache_dir if cfg.data.plan_cache else None}


def build_from_config(cfg: Config, tokenizer: Any, num_tokens_per_tile: int,
                      entries: list | None = None) -> tuple[SupervisedDataset, DataReport]:
    """Scan and plan every sample (fails before training on bad data under on_error=strict): the training
    datasets, or `entries` (the eval sets) under the same template, image settings and policies."""
    return build_dataset(
        dataset_entries(cfg) if entries is None else entries,
        tokenizer,
        cfg.model.template,
        image_settings(cfg, num_tokens_per_tile),
        max_seq_length=cfg.data.max_seq_length,
        length_policy=cfg.data.length_policy,
        max_drop_share=cfg.data.max_drop_share,
        on_error=cfg.data.on_error,
        system_message=cfg.data.system_message,
        seed=cfg.data.seed,
        **scan_options(cfg),
    )
