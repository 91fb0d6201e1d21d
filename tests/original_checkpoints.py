"""Tiny synthetic checkpoints in OpenGVLab's ORIGINAL InternVL layout, and an independent reference forward.

`write_original_checkpoint` writes what an OpenGVLab repo holds: an `InternVLChatConfig`-style config.json
(model_type internvl_chat, vision_config, llm_config), random weights under the original key names
(vision_model.*, mlp1.*, language_model.*) split over several shards with an index, and a tokenizer.json with
InternVL's special tokens (the project's tiny byte-level BPE, with an original-style tokenizer_config.json).

The shape tables here are written from the original modeling code's module definitions, not from the converter.
`reference_logits` recomputes the model's output without the converter: a hand-written InternViT forward, the
original pixel-shuffle and mlp1, then the LLM built by transformers' own text class from the original tensors
(InternLM2 split by explicit index loops; Qwen3-MoE per-expert weights merged by transformers' own loader).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

TOKENIZER_SRC = Path(__file__).resolve().parents[1] / "internvl_exp" / "models" / "assets" / "tiny_tokenizer"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>",
           "<ref>", "</ref>", "<box>", "</box>"]
VOCAB = 1024  # the tiny tokenizer's size
ARCH = {"internlm2": "InternLM2ForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
        "qwen3_moe": "Qwen3MoeForCausalLM", "gpt_oss": "GptOssForCausalLM", "phi3": "Phi3ForCausalLM",
        "llama": "LlamaForCausalLM"}
FAMILIES = list(ARCH)


@dataclass
class Dims:
    vit_hidden: int = 32
    vit_layers: int = 2
    vit_heads: int = 4
    vit_inter: int = 64
    image: int = 56
    patch: int = 14
    hidden: int = 64
    layers: int = 2
    heads: int = 8
    kv_heads: int = 2
    head_dim: int = 8
    inter: int = 96
    experts: int = 4
    moe_inter: int = 16


@dataclass
class Written:
    path: Path
    config: dict
    tensors: dict[str, torch.Tensor] = field(repr=False)


def vision_config(vit: str, d: Dims) -> dict:
    six_b = vit == "6b"
    return {
        "model_type": "intern_vit_6b", "architectures": ["InternVisionModel"], "hidden_size": d.vit_hidden,
        "num_hidden_layers": d.vit_layers, "num_attention_heads": d.vit_heads, "intermediate_size": d.vit_inter,
        "image_size": d.image, "patch_size": d.patch, "num_channels": 3, "hidden_act": "gelu",
        "norm_type": "rms_norm" if six_b else "layer_norm", "qkv_bias": not six_b, "qk_normalization": six_b,
        "layer_norm_eps": 1e-6, "dropout": 0.0, "drop_path_rate": 0.0, "attention_dropout": 0.0,
        "initializer_range": 0.02, "initializer_factor": 0.1 if six_b else 1.0, "use_flash_attn": False,
    }


def llm_config(family: str, d: Dims, tie: bool = False) -> dict:
    cfg = {
        "architectures": [ARCH[family]], "model_type": family, "vocab_size": VOCAB, "hidden_size": d.hidden,
        "intermediate_size": d.inter, "num_hidden_layers": d.layers, "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads, "hidden_act": "silu", "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": tie, "use_cache": True,
        "attn_implementation": "eager", "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 0, "transformers_version": "4.37.2",
    }
    if family == "internlm2":
        cfg.update(bias=False, rope_scaling={"type": "dynamic", "factor": 2.0},
                   auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config"})
    if family in ("qwen3", "qwen3_moe", "gpt_oss"):
        cfg["head_dim"] = d.head_dim
    if family == "qwen3_moe":
        cfg.update(num_experts=d.experts, num_experts_per_tok=2, moe_intermediate_size=d.moe_inter,
                   decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    if family == "gpt_oss":
        cfg.update(num_local_experts=d.experts, num_experts_per_tok=2, intermediate_size=d.moe_inter,
                   sliding_window=8, layer_types=["sliding_attention", "full_attention"][: d.layers],
                   attention_bias=True, max_position_embeddings=131072,
                   rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                 "truncate": False, "original_max_position_embeddings": 4096})
    if family == "phi3":
        cfg.update(original_max_position_embeddings=512, resid_pdrop=0.0, embd_pdrop=0.0)
    return cfg


def original_config(family: str, vit: str, d: Dims, tie: bool = False) -> dict:
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "vision_config": vision_config(vit, d), "llm_config": llm_config(family, d, tie),
        "select_layer": -1, "force_image_size": d.image, "downsample_ratio": 0.5, "template": "internvl2_5",
        "dynamic_image_size": True, "use_thumbnail": True, "ps_version": "v2", "min_dynamic_patch": 1,
        "max_dynamic_patch": 6, "use_backbone_lora": 0, "use_llm_lora": 0, "pad2square": False,
        "tie_word_embeddings": False, "hidden_size": d.hidden, "torch_dtype": "float32",
    }


def vision_shapes(vit: str, d: Dims) -> dict[str, tuple[int, ...]]:
    """InternVisionEmbeddings / InternVisionEncoderLayer parameters (modeling_intern_vit.py)."""
    C, n = d.vit_hidden, (d.image // d.patch) ** 2
    s = {
        "vision_model.embeddings.class_embedding": (1, 1, C),
        "vision_model.embeddings.position_embedding": (1, n + 1, C),
        "vision_model.embeddings.patch_embedding.weight": (C, 3, d.patch, d.patch),
        "vision_model.embeddings.patch_embedding.bias": (C,),
    }
    for i in range(d.vit_layers):
        p = f"vision_model.encoder.layers.{i}."
        s |= {p + "attn.qkv.weight": (3 * C, C), p + "attn.proj.weight": (C, C), p + "attn.proj.bias": (C,),
              p + "ls1": (C,), p + "ls2": (C,), p + "mlp.fc1.weight": (d.vit_inter, C), p + "mlp.fc1.bias": (d.vit_inter,),
              p + "mlp.fc2.weight": (C, d.vit_inter), p + "mlp.fc2.bias": (C,), p + "norm1.weight": (C,),
              p + "norm2.weight": (C,)}
        if vit == "6b":
            s |= {p + "attn.q_norm.weight": (C,), p + "attn.k_norm.weight": (C,)}
        else:
            s |= {p + "attn.qkv.bias": (3 * C,), p + "norm1.bias": (C,), p + "norm2.bias": (C,)}
    return s


def projector_shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    c4 = d.vit_hidden * 4
    return {"mlp1.0.weight": (c4,), "mlp1.0.bias": (c4,), "mlp1.1.weight": (d.hidden, c4), "mlp1.1.bias": (d.hidden,),
            "mlp1.3.weight": (d.hidden, d.hidden), "mlp1.3.bias": (d.hidden,)}


def llm_shapes(family: str, d: Dims, tie: bool = False) -> dict[str, tuple[int, ...]]:
    """Original LLM parameters under language_model.* (InternLM2's own names; the others as transformers 4 saved them)."""
    H, q, kv = d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim
    lm = "language_model.model."
    if family == "internlm2":
        s = {lm + "tok_embeddings.weight": (VOCAB, H), lm + "norm.weight": (H,)}
        for i in range(d.layers):
            p = f"{lm}layers.{i}."
            s |= {p + "attention.wqkv.weight": (q + 2 * kv, H), p + "attention.wo.weight": (H, q),
                  p + "feed_forward.w1.weight": (d.inter, H), p + "feed_forward.w3.weight": (d.inter, H),
                  p + "feed_forward.w2.weight": (H, d.inter), p + "attention_norm.weight": (H,), p + "ffn_norm.weight": (H,)}
        if not tie:
            s["language_model.output.weight"] = (VOCAB, H)
        return s
    s = {lm + "embed_tokens.weight": (VOCAB, H), lm + "norm.weight": (H,)}
    for i in range(d.layers):
        p = f"{lm}layers.{i}."
        s |= {p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
              p + "self_attn.o_proj.weight": (H, q)}
        if family == "phi3":
            s |= {p + "self_attn.qkv_proj.weight": (q + 2 * kv, H), p + "mlp.gate_up_proj.weight": (2 * d.inter, H),
                  p + "mlp.down_proj.weight": (H, d.inter)}
            continue
        s |= {p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
              p + "self_attn.v_proj.weight": (kv, H)}
        if family in ("qwen2", "gpt_oss"):
            s |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,), p + "self_attn.v_proj.bias": (kv,)}
        if family in ("qwen3", "qwen3_moe"):
            s |= {p + "self_attn.q_norm.weight": (d.head_dim,), p + "self_attn.k_norm.weight": (d.head_dim,)}
        if family == "qwen3_moe":
            s[p + "mlp.gate.weight"] = (d.experts, H)
            for e in range(d.experts):
                s |= {f"{p}mlp.experts.{e}.gate_proj.weight": (d.moe_inter, H),
                      f"{p}mlp.experts.{e}.up_proj.weight": (d.moe_inter, H),
                      f"{p}mlp.experts.{e}.down_proj.weight": (H, d.moe_inter)}
        elif family == "gpt_oss":
            E, I = d.experts, d.moe_inter
            s |= {p + "self_attn.o_proj.bias": (H,), p + "self_attn.sinks": (d.heads,),
                  p + "mlp.router.weight": (E, H), p + "mlp.router.bias": (E,),
                  p + "mlp.experts.gate_up_proj": (E, H, 2 * I), p + "mlp.experts.gate_up_proj_bias": (E, 2 * I),
                  p + "mlp.experts.down_proj": (E, I, H), p + "mlp.experts.down_proj_bias": (E, H)}
        else:
            s |= {p + "mlp.gate_proj.weight": (d.inter, H), p + "mlp.up_proj.weight": (d.inter, H),
                  p + "mlp.down_proj.weight": (H, d.inter)}
    if not tie:
        s["language_model.lm_head.weight"] = (VOCAB, H)
    return s


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(shapes.items()):
        t = torch.randn(shape, generator=g)
        last = name.rsplit(".", 1)[-1]
        if "norm" in name or name.endswith(("ls1", "ls2")) or name.endswith("mlp1.0.weight"):
            t = 1.0 + 0.2 * t  # scales near one so the signal survives, but not all-ones (a swap must show)
        elif last == "bias" or name.endswith("sinks"):
            t = 0.1 * t
        else:
            fan_in = shape[-1] if len(shape) > 1 else 1
            if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                fan_in = shape[1]  # GPT-OSS experts compute x @ W: the input dim is dim 1
            if "patch_embedding" in name:
                t = t / math.sqrt(shape[1] * shape[2] * shape[3])
            elif len(shape) > 1 and "embed" not in name:
                t = t / math.sqrt(fan_in)
            else:
                t = 0.5 * t  # embedding tables, CLS and position embeddings
        out[name] = t.to(dtype).contiguous()
    return out


def write_tokenizer(dst: Path) -> None:
    shutil.copy(TOKENIZER_SRC / "tokenizer.json", dst / "tokenizer.json")
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": SPECIAL, "model_max_length": 4096,
    }, indent=2))
    (dst / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": SPECIAL,
                                                             "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))


def write_shards(dst: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    """Round-robin over sorted keys: consecutive tensors (a layer's experts, a layer's parts) land in different files."""
    from safetensors.torch import save_file

    names = sorted(tensors)
    parts = [names[i::num_shards] for i in range(num_shards)]
    weight_map = {}
    for i, part in enumerate(parts, start=1):
        fname = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(dst / fname), metadata={"format": "pt"})
        weight_map |= {k: fname for k in part}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def write_original_checkpoint(dst: Path, family: str, vit: str = "300m", *, dims: Dims | None = None, seed: int = 0,
                              num_shards: int = 3, tie: bool = False, dtype=torch.float32) -> Written:
    d = dims or Dims()
    dst.mkdir(parents=True, exist_ok=True)
    cfg = original_config(family, vit, d, tie)
    shapes = vision_shapes(vit, d) | projector_shapes(d) | llm_shapes(family, d, tie)
    tensors = random_tensors(shapes, seed, dtype)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    write_shards(dst, tensors, num_shards)
    write_tokenizer(dst)
    return Written(dst, cfg, tensors)


# --- independent reference forward ---------------------------------------------------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def vit_forward(t: dict[str, torch.Tensor], vcfg: dict, pixel_values: torch.Tensor) -> torch.Tensor:
    """InternViT written out from its definition: patch conv + CLS + position, then pre-norm layers with layer
    scale; qkv rows are [q | k | v]; qk-norm (6B) is an RMSNorm over all heads before the head split."""
    C, nh, eps = vcfg["hidden_size"], vcfg["num_attention_heads"], vcfg["layer_norm_eps"]
    hd = C // nh
    e = "vision_model.embeddings."
    x = F.conv2d(pixel_values, t[e + "patch_embedding.weight"], t[e + "patch_embedding.bias"], stride=vcfg["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    B, N = x.shape[0], x.shape[1] + 1
    x = torch.cat([t[e + "class_embedding"].expand(B, 1, C), x], dim=1) + t[e + "position_embedding"]

    def norm(y, prefix):
        if vcfg["norm_type"] == "rms_norm":
            return _rms(y, t[prefix + ".weight"], eps)
        return F.layer_norm(y, (C,), t[prefix + ".weight"], t[prefix + ".bias"], eps)

    for i in range(vcfg["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = norm(x, p + "norm1")
        qkv = F.linear(h, t[p + "attn.qkv.weight"], t.get(p + "attn.qkv.bias"))
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        if vcfg["qk_normalization"]:
            q, k = _rms(q, t[p + "attn.q_norm.weight"], eps), _rms(k, t[p + "attn.k_norm.weight"], eps)
        q, k, v = (z.view(B, N, nh, hd).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        a = F.linear(a.transpose(1, 2).reshape(B, N, C), t[p + "attn.proj.weight"], t[p + "attn.proj.bias"])
        x = x + t[p + "ls1"] * a
        h = F.linear(F.gelu(F.linear(norm(x, p + "norm2"), t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"])),
                     t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"])
        x = x + t[p + "ls2"] * h
    return x


def image_features(t: dict[str, torch.Tensor], cfg: dict, pixel_values: torch.Tensor) -> torch.Tensor:
    """Original extract_feature: drop CLS, pixel shuffle (ps_version v2, ratio 0.5), mlp1. -> (tiles, tokens, llm)."""
    x = vit_forward(t, cfg["vision_config"], pixel_values)[:, 1:]
    n, L, c = x.shape
    side = int(math.isqrt(L))
    x = x.reshape(n, side, side, c)
    r = cfg["downsample_ratio"]
    # v2 pixel shuffle: fold width into channels, transpose, fold height, transpose back.
    x = x.reshape(n, side, int(side * r), int(c / r)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(side * r), int(side * r), int(c / (r * r))).permute(0, 2, 1, 3)
    x = x.reshape(n, -1, x.shape[-1])
    x = F.layer_norm(x, (x.shape[-1],), t["mlp1.0.weight"], t["mlp1.0.bias"], 1e-5)
    x = F.linear(F.gelu(F.linear(x, t["mlp1.1.weight"], t["mlp1.1.bias"])), t["mlp1.3.weight"], t["mlp1.3.bias"])
    return x


def internlm2_split_by_index(wqkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    """q, k, v row blocks of InternLM2's wqkv, picked by explicit row arithmetic: KV group g occupies rows
    [g*(G+2)*d, (g+1)*(G+2)*d), holding G query heads, then one key head, then one value head."""
    G = heads // kv_heads
    q_rows, k_rows, v_rows = [], [], []
    for g in range(kv_heads):
        base = g * (G + 2) * head_dim
        for j in range(G):
            q_rows += range(base + j * head_dim, base + (j + 1) * head_dim)
        k_rows += range(base + G * head_dim, base + (G + 1) * head_dim)
        v_rows += range(base + (G + 1) * head_dim, base + (G + 2) * head_dim)
    idx = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    return wqkv[idx(q_rows)], wqkv[idx(k_rows)], wqkv[idx(v_rows)]


def reference_text_model(w: Written, workdir: Path):
    """The LLM built by transformers' own text class from the original tensors, no converter code involved."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    llm = dict(w.config["llm_config"])
    family = llm["model_type"]
    sd = {k[len("language_model."):]: v for k, v in w.tensors.items() if k.startswith("language_model.")}
    workdir.mkdir(parents=True, exist_ok=True)
    if family == "internlm2":
        out = {}
        for k, v in sd.items():
            m = k.split(".")
            if k.endswith("attention.wqkv.weight"):
                q, kk, vv = internlm2_split_by_index(v, llm["num_attention_heads"], llm["num_key_value_heads"],
                                                     llm["hidden_size"] // llm["num_attention_heads"])
                pre = ".".join(m[:-3])
                out |= {f"{pre}.self_attn.q_proj.weight": q, f"{pre}.self_attn.k_proj.weight": kk,
                        f"{pre}.self_attn.v_proj.weight": vv}
                continue
            k2 = (k.replace("tok_embeddings", "embed_tokens").replace("attention.wo", "self_attn.o_proj")
                  .replace("feed_forward.w1", "mlp.gate_proj").replace("feed_forward.w3", "mlp.up_proj")
                  .replace("feed_forward.w2", "mlp.down_proj").replace("attention_norm", "input_layernorm")
                  .replace("ffn_norm", "post_attention_layernorm"))
            out["lm_head.weight" if k2 == "output.weight" else k2] = v
        sd = out
        cfg = LlamaConfig(**{k: v for k, v in llm.items() if k not in ("architectures", "model_type", "bias", "auto_map",
                                                                          "attn_implementation", "torch_dtype")},
                          attention_bias=llm["bias"])
        cfg.save_pretrained(str(workdir))
    else:
        cfg_dict = {k: v for k, v in llm.items() if k not in ("attn_implementation", "torch_dtype")}
        (workdir / "config.json").write_text(json.dumps(cfg_dict))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(workdir / "model.safetensors"), metadata={"format": "pt"})
    return AutoModelForCausalLM.from_pretrained(str(workdir), dtype=torch.float32, attn_implementation="eager").eval()


def sample_inputs(image_token_id: int, start_id: int, end_id: int, tokens_per_tile: int, tiles: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(tiles, 3, 56, 56, generator=g)
    text = torch.randint(20, 500, (6,), generator=g).tolist()
    ids = text[:3] + [start_id] + [image_token_id] * (tokens_per_tile * tiles) + [end_id] + text[3:]
    return pixel_values, torch.tensor([ids])


@torch.no_grad()
def reference_logits(w: Written, workdir: Path, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                     image_token_id: int) -> torch.Tensor:
    text = reference_text_model(w, workdir)
    feats = image_features(w.tensors, w.config, pixel_values).reshape(-1, w.config["llm_config"]["hidden_size"])
    embeds = text.get_input_embeddings()(input_ids).clone()
    mask = input_ids[0] == image_token_id
    assert int(mask.sum()) == feats.shape[0]
    embeds[0, mask] = feats
    return text(inputs_embeds=embeds).logits
