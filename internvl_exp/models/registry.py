"""Model families: how the named parts (vision, projector, llm, lm_head) map to module paths.

Everything that speaks about "what trains" (freeze strategies, LoRA targets, per-part learning rates,
drop-path, the parameter report) goes through this table, never through raw module paths.

Besides the four parts there is one sub-part, ``embeddings``: the LLM's input token embeddings. It belongs to
``llm`` (``part_of`` says ``llm``) but can be frozen on its own and kept out of weight decay. When the checkpoint
ties ``lm_head`` to the input embeddings (one tensor), ``named_parameters`` lists that tensor once, under the
embeddings name; freezing therefore requires ``lm_head`` and ``embeddings`` to have the same mode
(checked in ``internvl_exp.train.tuning.freeze``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Prefixes that wrappers put in front of the base model's parameter names (PEFT's PeftModel / LoraModel).
_WRAPPER_PREFIXES = ("base_model.model.",)
# Inside PEFT's ModulesToSaveWrapper the trainable copy lives under `modules_to_save.<adapter>.` and the frozen
# original under `original_module.`; both are the same module of the base model.
_MODULES_TO_SAVE = re.compile(r"\.(?:modules_to_save\.[^.]+|original_module)(?=\.)")
_LORA_PARAM = re.compile(r"\.(?:lora_[A-Za-z]+|lora_magnitude_vector)\.")


@dataclass(frozen=True)
class Family:
    name: str
    # part -> module-name prefixes within the top-level model
    parts: dict[str, tuple[str, ...]]
    # the LLM's input token embeddings (sub-part of llm)
    embeddings: tuple[str, ...]
    # ModuleList of the vision tower's layers (drop-path, vit_last_n, layer-wise lr decay)
    vision_layers: str
    # the vision tower's stem before its layers: patch / position embeddings (layer-wise lr decay)
    vision_stem: str
    # ModuleList of the language model's decoder layers (LoRA targets)
    llm_layers: str
    # vision parameters that are embeddings in the weight-decay sense (positions, class token)
    vision_embedding_params: tuple[str, ...]
    # LoRA target projections, relative to one decoder layer / one vision layer
    llm_lora_targets: tuple[str, ...] = (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    )
    vision_lora_targets: tuple[str, ...] = (
        "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.projection_layer",
        "mlp.fc1", "mlp.fc2",
    )

    def base_name(self, param_name: str) -> str:
        """The name in the plain base model: without PEFT's prefixes and modules_to_save indirection."""
        name = param_name
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        return _MODULES_TO_SAVE.sub("", name)

    def part_of(self, param_name: str) -> str:
        """The part a parameter (or module) belongs to (PEFT wrappers' prefixes are ignored)."""
        name = self.base_name(param_name)
        for part, prefixes in self.parts.items():
            if _under(name, prefixes):
                return part
        raise KeyError(f"parameter {param_name!r} belongs to no part of family {self.name!r}")

    def is_embeddings(self, param_name: str) -> bool:
        """True for the LLM's input token embeddings (the `embeddings` sub-part of llm)."""
        return _under(self.base_name(param_name), self.embeddings)

    def is_embedding_param(self, param_name: str) -> bool:
        """Embeddings in the weight-decay sense: LLM token embeddings, ViT position embeddings and class token."""
        name = self.base_name(param_name)
        return _under(name, self.embeddings) or any(name == p for p in self.vision_embedding_params)

    def vision_layer_index(self, param_name: str) -> int | None:
        """Index of the vision layer a parameter belongs to, or None outside the layer stack."""
        name = self.base_name(param_name)
        prefix = self.vision_layers + "."
        if not name.startswith(prefix):
            return None
        return int(name[len(prefix):].split(".", 1)[0])

    def is_peft_original(self, name: str) -> bool:
        """True for PEFT's idle original of a `modules_to_save` module (a parameter or module name): it never
        trains or runs, its trainable copy does."""
        return ".original_module." in f".{name}."

    def is_lora_param(self, param_name: str) -> bool:
        return bool(_LORA_PARAM.search(param_name))

    def lora_target_regex(
        self,
        llm_targets: tuple[str, ...] | None = None,
        vision_targets: tuple[str, ...] | None = None,
    ) -> str:
        """A regex that PEFT `re.fullmatch`es against base-model module names.

        Anchored at each layer stack, so the vision tower's `attention.q_proj` never matches an LLM target (and
        vice versa) although the leaf names are identical. Pass None to leave a tower out.
        """
        alternatives = []
        if llm_targets:
            alternatives.append(_layer_regex(self.llm_layers, llm_targets))
        if vision_targets:
            alternatives.append(_layer_regex(self.vision_layers, vision_targets))
        if not alternatives:
            raise ValueError("lora_target_regex: no tower has LoRA targets")
        return "|".join(f"(?:{a})" for a in alternatives)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _layer_regex(layers: str, targets: tuple[str, ...]) -> str:
    leaves = "|".join(re.escape(t) for t in targets)
    return rf"{re.escape(layers)}\.\d+\.(?:{leaves})"


# transformers' native InternVLForConditionalGeneration (every -hf / converted checkpoint).
INTERNVL_HF = Family(
    name="internvl_hf",
    parts={
        "vision": ("model.vision_tower",),
        "projector": ("model.multi_modal_projector",),
        "llm": ("model.language_model",),
        "lm_head": ("lm_head",),
    },
    embeddings=("model.language_model.embed_tokens",),
    vision_layers="model.vision_tower.encoder.layer",
    vision_stem="model.vision_tower.embeddings",
    llm_layers="model.language_model.layers",
    vision_embedding_params=(
        "model.vision_tower.embeddings.cls_token",
        "model.vision_tower.embeddings.mask_token",
        "model.vision_tower.embeddings.position_embeddings",
    ),
)

FAMILIES = {INTERNVL_HF.name: INTERNVL_HF}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None
