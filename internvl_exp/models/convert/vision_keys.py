"""InternViT (300M and 6B) and the mlp1 projector: original key names -> native InternVL ones."""

from __future__ import annotations

import re

from internvl_exp.models.convert.invert import apply_inverted
from internvl_exp.models.convert.plan import Rule, rename, split_rows

VISION_PREFIX = "vision_model."
PROJECTOR_PREFIX = "mlp1."
NATIVE_VISION = "model.vision_tower."
NATIVE_PROJECTOR = "model.multi_modal_projector."

# Applied in order to the key after "vision_model."; the fused attn.qkv is handled separately.
_VISION_RENAMES = [
    (r"^embeddings\.class_embedding$", "embeddings.cls_token"),
    (r"^embeddings\.position_embedding$", "embeddings.position_embeddings"),
    (r"^embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
    (r"^encoder\.layers\.(\d+)\.ls1$", r"encoder.layer.\1.lambda_1"),
    (r"^encoder\.layers\.(\d+)\.ls2$", r"encoder.layer.\1.lambda_2"),
    (r"^encoder\.layers\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.projection_layer."),
    (r"^encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.", r"encoder.layer.\1.attention.\2."),
    (r"^encoder\.layers\.(\d+)\.norm1\.", r"encoder.layer.\1.layernorm_before."),
    (r"^encoder\.layers\.(\d+)\.norm2\.", r"encoder.layer.\1.layernorm_after."),
    (r"^encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.", r"encoder.layer.\1.mlp.\2."),
]
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
_QKV_TARGET = r"encoder.layer.\1.attention.{part}_proj.\2"  # one per part of "qkv"

# mlp1 is nn.Sequential(LayerNorm, Linear, GELU, Linear): index 2 (GELU) has no weights.
_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_PROJECTOR_KEY = re.compile(r"^mlp1\.(\d+)\.(weight|bias)$")


def vision_rules(keys: list[str], hidden_size: int) -> list[Rule]:
    """Rules for the `vision_model.*` keys; keys matching no rule are left for the coverage check to report."""
    rules = []
    for key in keys:
        rest = key[len(VISION_PREFIX):]
        m = _QKV.match(rest)
        if m:
            # Rows are three contiguous blocks q | k | v (reshape(B, N, 3, H, D) in the original forward).
            targets = tuple(NATIVE_VISION + m.expand(_QKV_TARGET.format(part=p)) for p in "qkv")
            rules.append(split_rows(key, targets, (hidden_size,) * 3, "vision qkv split into thirds"))
            continue
        for pattern, repl in _VISION_RENAMES:
            new, n = re.subn(pattern, repl, rest)
            if n:
                rules.append(rename(key, NATIVE_VISION + new))
                break
    return rules


def projector_rules(keys: list[str]) -> list[Rule]:
    rules = []
    for key in keys:
        m = _PROJECTOR_KEY.match(key)
        if m and m.group(1) in _PROJECTOR:
            rules.append(rename(key, f"{NATIVE_PROJECTOR}{_PROJECTOR[m.group(1)]}.{m.group(2)}"))
    return rules


def original_vision_key(native: str) -> str | None:
    """The original name of a native `model.vision_tower.*` key (q/k/v parts all name the fused qkv), by the
    tables above run backwards; None for a key they do not produce."""
    if not native.startswith(NATIVE_VISION):
        return None
    table = _VISION_RENAMES + [(_QKV.pattern, _QKV_TARGET.format(part=p)) for p in "qkv"]
    rest = apply_inverted(native[len(NATIVE_VISION):], table)
    return None if rest is None else VISION_PREFIX + rest


def original_projector_key(native: str) -> str | None:
    index = {name: i for i, name in _PROJECTOR.items()}
    m = re.match(rf"^{re.escape(NATIVE_PROJECTOR)}(\w+)\.(weight|bias)$", native)
    if not m or m.group(1) not in index:
        return None
    return f"{PROJECTOR_PREFIX}{index[m.group(1)]}.{m.group(2)}"
