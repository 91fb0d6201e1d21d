"""Language-model key tables, one per LLM family of the original checkpoints.

Every family's keys start with `language_model.` in the original file; the native layout wants the decoder under
`model.language_model.` and the head as `lm_head`. Families already stored in transformers' own layout (Qwen2,
Qwen3, Phi3, Llama, GPT-OSS) only move prefix; InternLM2 is renamed to Llama and its fused `wqkv` split;
Qwen3-MoE per-expert Linear weights are stacked into the fused expert tensors transformers 5 holds.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from internvl_exp.models.convert.invert import apply_inverted
from internvl_exp.models.convert.plan import Rule, rename

if TYPE_CHECKING:
    import torch

LLM_PREFIX = "language_model."
NATIVE_DECODER = "model.language_model."
NATIVE_HEAD = "lm_head.weight"
HF_DECODER = LLM_PREFIX + "model."  # transformers' CausalLM layout under language_model.
HF_HEAD = LLM_PREFIX + "lm_head.weight"
INTERNLM2_HEAD = LLM_PREFIX + "output.weight"


@dataclass(frozen=True)
class TextDims:
    num_heads: int
    num_kv_heads: int
    head_dim: int


def _hf_layout_rules(keys: list[str], dims: TextDims) -> list[Rule]:
    """transformers' own CausalLM layout under `language_model.`: language_model.model.X / language_model.lm_head."""
    rules = []
    for key in keys:
        if key.startswith(HF_DECODER):
            rules.append(rename(key, NATIVE_DECODER + key[len(HF_DECODER):]))
        elif key == HF_HEAD:
            rules.append(rename(key, NATIVE_HEAD))
    return rules


# --- InternLM2 -> Llama ------------------------------------------------------------------------------------

_INTERNLM2_RENAMES = [
    (r"^language_model\.model\.tok_embeddings\.weight$", "embed_tokens.weight"),
    (r"^language_model\.model\.norm\.weight$", "norm.weight"),
    (r"^language_model\.model\.layers\.(\d+)\.attention\.wo\.", r"layers.\1.self_attn.o_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.", r"layers.\1.mlp.gate_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.", r"layers.\1.mlp.up_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.", r"layers.\1.mlp.down_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.attention_norm\.", r"layers.\1.input_layernorm."),
    (r"^language_model\.model\.layers\.(\d+)\.ffn_norm\.", r"layers.\1.post_attention_layernorm."),
]
_WQKV = re.compile(r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)$")
_WQKV_TARGET = r"layers.\1.self_attn.{part}_proj.\2"  # under NATIVE_DECODER, one per part of "qkv"


def split_internlm2_wqkv(wqkv: "torch.Tensor", dims: TextDims) -> list["torch.Tensor"]:
    """InternLM2's fused wqkv -> q, k, v. The rows are grouped per KV head: for each of the num_kv_heads groups,
    `G = num_heads / num_kv_heads` query heads, then that group's key head, then its value head (head_dim rows each),
    as InternLM2's forward rearranges them ('(h gs d) -> h gs d' with gs = G + 2)."""
    groups = dims.num_heads // dims.num_kv_heads
    rest = wqkv.shape[1:]
    blocks = wqkv.reshape(dims.num_kv_heads, groups + 2, dims.head_dim, *rest)
    q = blocks[:, :groups].reshape(dims.num_heads * dims.head_dim, *rest)
    k = blocks[:, groups].reshape(dims.num_kv_heads * dims.head_dim, *rest)
    v = blocks[:, groups + 1].reshape(dims.num_kv_heads * dims.head_dim, *rest)
    return [q.contiguous(), k.contiguous(), v.contiguous()]


def fuse_internlm2_wqkv(parts: list["torch.Tensor"], dims: TextDims) -> list["torch.Tensor"]:
    """q, k, v -> InternLM2's grouped wqkv: the exact inverse of split_internlm2_wqkv."""
    import torch

    q, k, v = parts
    groups = dims.num_heads // dims.num_kv_heads
    rest = q.shape[1:]
    blocks = torch.cat([q.reshape(dims.num_kv_heads, groups, dims.head_dim, *rest),
                        k.reshape(dims.num_kv_heads, 1, dims.head_dim, *rest),
                        v.reshape(dims.num_kv_heads, 1, dims.head_dim, *rest)], dim=1)
    return [blocks.reshape(dims.num_kv_heads * (groups + 2) * dims.head_dim, *rest).contiguous()]


def _internlm2_rules(keys: list[str], dims: TextDims) -> list[Rule]:
    rules = []
    for key in keys:
        m = _WQKV.match(key)
        if m:
            rules.append(Rule((key,), tuple(NATIVE_DECODER + m.expand(_WQKV_TARGET.format(part=p)) for p in "qkv"),
                              lambda ts, d=dims: split_internlm2_wqkv(ts[0], d), "InternLM2 grouped wqkv split",
                              lambda ts, d=dims: fuse_internlm2_wqkv(ts, d)))
            continue
        if key == INTERNLM2_HEAD:
            rules.append(rename(key, NATIVE_HEAD))
            continue
        for pattern, repl in _INTERNLM2_RENAMES:
            new, n = re.subn(pattern, repl, key)
            if n:
                rules.append(rename(key, NATIVE_DECODER + new))
                break
    return rules


# --- Qwen3-MoE ----------------------------------------------------------------------------------------------

_EXPERT = re.compile(r"^language_model\.model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_EXPERT_KEY = "language_model.model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"  # what _EXPERT matches
_EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")
_FUSED_EXPERTS = ("gate_up_proj", "down_proj")  # the native tensors, under NATIVE_DECODER layers.L.mlp.experts.


def _stack_experts(ts: list["torch.Tensor"]) -> list["torch.Tensor"]:
    """[gate_0, up_0, down_0, gate_1, ...] -> gate_up_proj (E, 2I, H) = per expert cat(gate, up); down_proj (E, H, I).
    Qwen3MoeExperts computes `linear(x, gate_up_proj[e]).chunk(2)` -> (gate, up), so gate rows come first."""
    import torch

    gates, ups, downs = ts[0::3], ts[1::3], ts[2::3]
    gate_up = torch.stack([torch.cat([g, u], dim=0) for g, u in zip(gates, ups)])
    return [gate_up, torch.stack(downs)]


def _unstack_experts(ts: list["torch.Tensor"]) -> list["torch.Tensor"]:
    """gate_up_proj, down_proj -> [gate_0, up_0, down_0, gate_1, ...], the inverse of _stack_experts (cloned:
    safetensors refuses to write views of one storage)."""
    gate_up, down = ts
    inter = gate_up.shape[1] // 2
    out = []
    for e in range(gate_up.shape[0]):
        out += [gate_up[e, :inter].clone(), gate_up[e, inter:].clone(), down[e].clone()]
    return out


def _qwen3_moe_rules(keys: list[str], dims: TextDims) -> list[Rule]:
    experts: dict[int, dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    plain = []
    for key in keys:
        m = _EXPERT.match(key)
        if m:
            experts[int(m.group(1))][int(m.group(2))][m.group(3)] = key
        else:
            plain.append(key)
    rules = _hf_layout_rules(plain, dims)
    for layer, by_expert in sorted(experts.items()):
        complete = sorted(by_expert)
        if complete != list(range(len(complete))) or any(len(by_expert[e]) != 3 for e in complete):
            continue  # a gap in the expert set: its keys stay unused, and the coverage check names them
        sources = tuple(by_expert[e][p] for e in complete for p in _EXPERT_PROJS)
        base = f"{NATIVE_DECODER}layers.{layer}.mlp.experts."
        rules.append(Rule(sources, tuple(base + t for t in _FUSED_EXPERTS), _stack_experts,
                          f"Qwen3-MoE layer {layer}: {len(complete)} experts stacked", _unstack_experts))
    return rules


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # llm_config.architectures[0] values
    native_model_type: str
    rules: Callable[[list[str], TextDims], list[Rule]]
    # Generation stop tokens by name, first found in the tokenizer wins the eos slot; all found are stop tokens.
    stop_tokens: tuple[str, ...]


FAMILIES = [
    Family("internlm2", ("InternLM2ForCausalLM",), "llama", _internlm2_rules, ("<|im_end|>",)),
    Family("qwen2", ("Qwen2ForCausalLM",), "qwen2", _hf_layout_rules, ("<|im_end|>",)),
    Family("qwen3", ("Qwen3ForCausalLM",), "qwen3", _hf_layout_rules, ("<|im_end|>",)),
    Family("qwen3_moe", ("Qwen3MoeForCausalLM",), "qwen3_moe", _qwen3_moe_rules, ("<|im_end|>",)),
    Family("gpt_oss", ("GptOssForCausalLM",), "gpt_oss", _hf_layout_rules, ("<|return|>",)),
    Family("phi3", ("Phi3ForCausalLM",), "phi3", _hf_layout_rules, ("<|end|>", "<|endoftext|>")),
    Family("llama", ("LlamaForCausalLM",), "llama", _hf_layout_rules, ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>")),
]


def family_of(llm_config: dict) -> Family | None:
    arch = (llm_config.get("architectures") or [None])[0]
    for fam in FAMILIES:
        if arch in fam.architectures:
            return fam
    model_type = llm_config.get("model_type")
    return next((f for f in FAMILIES if f.name == model_type), None)


def supported_architectures() -> list[str]:
    return [a for f in FAMILIES for a in f.architectures]


# --- native -> original names (export) ------------------------------------------------------------------------


def original_llm_keys(family: Family, native: str, shape: tuple[int, ...]) -> list[str]:
    """The original key(s) a native language-model key comes from, by this module's tables run backwards
    (several native keys can name one fused original key; a stacked expert tensor names one key per expert).
    Empty for a key the family's forward rules do not produce."""
    if native == NATIVE_HEAD:
        return [INTERNLM2_HEAD if family.name == "internlm2" else HF_HEAD]
    if not native.startswith(NATIVE_DECODER):
        return []
    rest = native[len(NATIVE_DECODER):]
    if family.name == "internlm2":
        table = [(p, r) for p, r in _INTERNLM2_RENAMES] + [(_WQKV.pattern, _WQKV_TARGET.format(part=p)) for p in "qkv"]
        found = apply_inverted(rest, table)
        return [found] if found else []
    if family.name == "qwen3_moe":
        m = re.match(r"^layers\.(\d+)\.mlp\.experts\.(\w+)$", rest)
        if m and m.group(2) in _FUSED_EXPERTS:
            projs = _EXPERT_PROJS[:2] if m.group(2) == "gate_up_proj" else _EXPERT_PROJS[2:]
            return [_EXPERT_KEY.format(layer=m.group(1), expert=e, proj=p) for e in range(shape[0]) for p in projs]
    return [HF_DECODER + rest]
