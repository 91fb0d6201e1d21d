"""Model families: how the named parts (vision, projector, llm, lm_head) map to module paths.

Everything that speaks about "what trains" (freeze strategies, LoRA targets, per-part learning rates,
the parameter report) goes through this table, never through raw module paths.
"""

from __future__ import annotations

from dataclasses import dataclass

PARTS = ("vision", "projector", "llm", "lm_head")


@dataclass(frozen=True)
class Family:
    name: str
    # part -> module-name prefixes within the top-level model
    parts: dict[str, tuple[str, ...]]
    # LoRA target projections inside the language model's decoder layers
    llm_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    vision_lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2")

    def part_of(self, param_name: str) -> str:
        """The part a parameter belongs to (ignores PEFT wrappers' prefixes)."""
        name = param_name
        for prefix in ("base_model.model.",):
            if name.startswith(prefix):
                name = name[len(prefix):]
        for part, prefixes in self.parts.items():
            if any(name == p or name.startswith(p + ".") for p in prefixes):
                return part
        raise KeyError(f"parameter {param_name!r} belongs to no part of family {self.name!r}")


# transformers' native InternVLForConditionalGeneration (every -hf / converted checkpoint).
INTERNVL_HF = Family(
    name="internvl_hf",
    parts={
        "vision": ("model.vision_tower",),
        "projector": ("model.multi_modal_projector",),
        "llm": ("model.language_model",),
        "lm_head": ("lm_head",),
    },
)

FAMILIES = {INTERNVL_HF.name: INTERNVL_HF}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None
