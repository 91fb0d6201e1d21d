"""Conversion of original OpenGVLab InternVL checkpoints (model_type internvl_chat, remote-code layout) to
transformers' native InternVLForConditionalGeneration layout, from config.json + safetensors alone.

Modules: source (reading config and headers), config_map, vision_keys, llm_keys (one table per LLM family),
plan, stream + writer (shard by shard), verify, tokenizer, processor, generation, checkpoint (the pipeline),
cache (ensure_converted). The way back (native -> original, tools/export.py): invert (the key tables run
backwards), export_config, export. Importing this package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from internvl_exp.models.convert.cache import ensure_converted
from internvl_exp.models.convert.checkpoint import convert_checkpoint as _convert
from internvl_exp.models.convert.source import ConversionError, is_original_layout

if TYPE_CHECKING:
    from internvl_exp.models.convert.checkpoint import ConversionReport


def convert_checkpoint(src, dst, *, show_progress: bool = True) -> "ConversionReport":
    """Convert the original checkpoint `src` into `dst`; see checkpoint.convert_checkpoint."""
    return _convert(src, dst, show_progress=show_progress)


__all__ = ["ConversionError", "convert_checkpoint", "ensure_converted", "is_original_layout"]
