"""Model FLOPs of a training step, and the peak FLOPS of common accelerators (the MFU denominator).

Per part p (vision, projector, llm, lm_head), with N_p its matmul weights (Linear/Conv, embeddings
excluded: a lookup does no matmul), T_p the trainable ones, and n_p the tokens the part processes:

    forward                    2 * N_p * n_p
    backward, activations      2 * N_p * n_p   only if p or a part upstream of p trains (gradients flow through p)
    backward, weights          2 * T_p * n_p
    attention (llm, vision)    4 * L * d * sum(s_i^2) forward, twice that backward when gradients flow through it

    n_vision    = tiles * (patches per tile + 1 class token)
    n_projector = tiles * image tokens per tile (after pixel shuffle)
    n_llm = n_lm_head = non-padding tokens of the batch (padding is reported apart, as padding_fraction)

With everything trainable this is the classic 6 * N per token (PaLM's model FLOPs, Chowdhery et al. 2022,
appendix B) plus its attention term; a frozen vision tower costs only its forward pass, LoRA adds little.
Rematerialisation (activation checkpointing) is not counted: MFU measures the model's necessary work.
Packed rows (several samples per row) are counted as one sequence in the attention term (an overestimate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from internvl_exp.config.choices import PARTS
from internvl_exp.models.loading import vision_tile_geometry
from internvl_exp.models.registry import Family

# Peak dense (no 2:4 sparsity) BF16/FP16 tensor-core TFLOPS per device. NVIDIA's datasheets print the
# sparse figure (footnoted "with sparsity"); the dense peak is half of it. Most specific names first.
# Sources: NVIDIA H100 datasheet (SXM 1,979 / PCIe 1,513 / NVL 1,671 sparse), H200 datasheet (SXM 1,979,
# NVL 1,671 sparse: the same GH100 silicon as H100), A100 datasheet (312 dense), L40S/L40/L4 datasheets,
# HGX B200 (4.5 PFLOPS sparse per GPU). Anything else (A10G, V100, consumer cards): set trainer.peak_tflops.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("B200", 2250.0),
    ("H200 NVL", 835.5),
    ("H200", 989.4),
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
)


def peak_tflops_for(device_name: str | None) -> float | None:
    """The table's dense BF16 peak for a device name (`torch.cuda.get_device_name()`), or None."""
    if not device_name:
        return None
    name = device_name.upper().replace("-", " ")
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.upper() in name:
            return tflops
    return None


@dataclass
class PartWeights:
    total: int = 0
    trainable: int = 0


@dataclass
class FlopsModel:
    """What the FLOPs formula needs to know about a model, taken once after freezing/LoRA."""

    weights: dict[str, PartWeights] = field(default_factory=dict)
    vision_tokens_per_tile: int = 0  # patches + class token
    image_tokens_per_tile: int = 0  # after pixel shuffle, what the projector and the LLM see
    llm_layers: int = 0
    llm_attn_width: int = 0  # heads * head_dim of the queries
    vision_layers: int = 0
    vision_attn_width: int = 0

    @classmethod
    def from_model(cls, model: Any, family: Family, image_tokens_per_tile: int) -> "FlopsModel":
        import torch.nn as nn

        weights = {p: PartWeights() for p in PARTS}
        for name, module in model.named_modules():
            if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                continue
            if family.is_peft_original(name):  # PEFT's idle copy of a part in `full` mode beside LoRA
                continue
            w = module.weight
            n = int(getattr(w, "ds_numel", 0) or w.numel())  # ZeRO-3 keeps the full size in ds_numel
            row = weights[family.part_of(f"{name}.weight")]
            row.total += n
            if w.requires_grad:
                row.trainable += n
        cfg = model.config
        vc, tc = cfg.vision_config, cfg.get_text_config()
        size, patch = vision_tile_geometry(vc)
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return cls(
            weights=weights,
            vision_tokens_per_tile=(size // patch) ** 2 + 1,
            image_tokens_per_tile=image_tokens_per_tile,
            llm_layers=tc.num_hidden_layers,
            llm_attn_width=tc.num_attention_heads * head_dim,
            vision_layers=vc.num_hidden_layers,
            vision_attn_width=vc.hidden_size,
        )

    def _gradient_flows(self) -> dict[str, bool]:
        """Per part: must activation gradients flow back through it (it, or a part upstream of it, trains)?
        A trainable part needs them through all its layers above the first (LoRA too: its adapters sit in
        every layer); the first layer's few input gradients are not worth a special case."""
        flows, upstream_trains = {}, False
        for part in PARTS:  # vision -> projector -> llm -> lm_head
            upstream_trains = upstream_trains or self.weights[part].trainable > 0
            flows[part] = upstream_trains
        return flows

    def step_flops(self, tokens: float, tokens_sq_sum: float, tiles: float) -> float:
        """Model FLOPs of forward + backward over a batch: `tokens` non-padding tokens, `tokens_sq_sum` the
        sum of squared sample lengths, `tiles` image tiles."""
        n = {
            "vision": tiles * self.vision_tokens_per_tile,
            "projector": tiles * self.image_tokens_per_tile,
            "llm": tokens,
            "lm_head": tokens,
        }
        flows = self._gradient_flows()
        total = 0.0
        for part in PARTS:
            w = self.weights[part]
            total += 2 * w.total * n[part]
            if flows[part]:
                total += 2 * w.total * n[part]
            total += 2 * w.trainable * n[part]
        attention = {
            "llm": 4 * self.llm_layers * self.llm_attn_width * tokens_sq_sum,
            "vision": 4 * self.vision_layers * self.vision_attn_width * tiles * self.vision_tokens_per_tile**2,
        }
        for part, fwd in attention.items():
            total += fwd * (3 if flows[part] else 1)
        return total
