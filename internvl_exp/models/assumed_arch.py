"""What the planner assumes for a preset's unsourced `arch` values, and why.

A preset leaves a dim null when no public source gives it (conf/model/*.yaml, docs/models.md), and random init
refuses such a preset rather than guess. A memory plan, though, only needs sizes that are close, so
`tools.plan` builds such a preset with the values below and prints every one of them as an assumption next to
its plan ("assumed model.arch.text.vocab_size=151655: ..."), so the reader knows which numbers rest on them.
Each reason names the sourced release or rule the value is taken from. Light: no torch, no transformers.
"""

from __future__ import annotations

from typing import Any

# Reasons shared by several presets.
_VOCAB_RULE = ("image_token_id + 7: OpenGVLab's fine-tune code adds its 9 special tokens after the tokenizer's own "
               "(<IMG_CONTEXT> 3rd, internvl_chat/internvl/train/constants.py) and resizes the embeddings to "
               "len(tokenizer) (internvl_chat_finetune.py L966-973), as InternVL2-4B/8B/76B and InternVL3-1B show")
_UNTIED = ("untied like every InternVL llm_config read (InternVL2-8B/26B, InternVL3-1B, InternVL3.5-1B/8B) and "
           "like this backbone's own config")
_QWEN3_VOCAB = "Qwen3's padded vocab, not resized, like InternVL3.5-1B/8B (xtuner presets of InternLM/xtuner)"
_QWEN3_UNTIED = "untied like InternVL3.5-1B/8B (xtuner presets)"
_QWEN3_FAMILY = ("InternVL3.5's scripts are internvl_chat_gpt_oss/shell/internvl3_5_qwen3/ and its config class "
                 "takes Qwen3/Qwen3-MoE LLMs")


def _qwen3(backbone: str, litgpt_line: int, card_llm: str, **dims: Any) -> dict[str, tuple[Any, str]]:
    """A dense InternVL3.5 whose LLM no source read names: the Qwen3 size whose untied parameter count matches
    the README's language-parameter count, dims from litgpt 0.5.13's transcription of that Qwen3 config."""
    why = (f"backbone assumed {backbone} ({_QWEN3_FAMILY}; its untied size matches the README's {card_llm} "
           f"language parameters), dims of litgpt 0.5.13 litgpt/config.py L{litgpt_line} "
           f"(https://huggingface.co/Qwen/{backbone}/blob/main/config.json)")
    out: dict[str, tuple[Any, str]] = {"model_type": ("qwen3", why)}
    out.update({k: (v, why) for k, v in dims.items()})
    out.update(vocab_size=(151936, _QWEN3_VOCAB), tie_word_embeddings=(False, _QWEN3_UNTIED))
    return out


# preset name -> {model.arch.text field: (assumed value, why)}; only fields the preset leaves null are used.
ASSUMED_TEXT: dict[str, dict[str, tuple[Any, str]]] = {
    "internvl2_1b": {"vocab_size": (151655, _VOCAB_RULE),
                     "tie_word_embeddings": (False, "false as InternVL2-1B-Pretrain's config.json sets it (OpenGVLab/"
                                             "InternVL2-Pretrain-Models commit 294da7aa, L84; the diff shown does "
                                             "not name its block), though the backbone Qwen2-0.5B ties")},
    "internvl2_2b": {"tie_word_embeddings": (False, _UNTIED)},
    "internvl2_4b": {"vocab_size": (32020, _VOCAB_RULE + " (InternVL2-4B-Pretrain added_tokens.json ends at "
                                           "</box> 32019)"),
                     "tie_word_embeddings": (False, _UNTIED)},
    "internvl2_40b": {"vocab_size": (64007, _VOCAB_RULE), "tie_word_embeddings": (False, _UNTIED)},
    "internvl2_76b": {"tie_word_embeddings": (False, _UNTIED)},
    "internvl2_5_1b": {"vocab_size": (151674, _VOCAB_RULE), "tie_word_embeddings": (False, _UNTIED)},
    "internvl2_5_2b": {"tie_word_embeddings": (False, _UNTIED)},
    "internvl2_5_8b": {"vocab_size": (92553, "like InternVL2-8B, same backbone (internlm2_5-7b-chat) and tokens"),
                       "tie_word_embeddings": (False, "untied like InternVL2-8B, same backbone")},
    "internvl2_5_26b": {"vocab_size": (92553, _VOCAB_RULE), "tie_word_embeddings": (False, _UNTIED)},
    "internvl2_5_38b": {"vocab_size": (151674, _VOCAB_RULE), "tie_word_embeddings": (False, _UNTIED)},
    "internvl2_5_78b": {"tie_word_embeddings": (False, _UNTIED)},
    "internvl3_2b": {"vocab_size": (151674, _VOCAB_RULE + "; like InternVL3-1B"),
                     "tie_word_embeddings": (False, "untied like InternVL3-1B")},
    "internvl3_8b": {"tie_word_embeddings": (False, "untied like InternVL3-1B")},
    "internvl3_9b": {"model_type": ("llama", "InternLM backbones are built as llama (transformers' InternVL "
                                             "converter maps InternVL3-9B to llama)"),
                     "vocab_size": (128512, "internlm3-8b-instruct's own vocab (transformers' InternLM3 config); "
                                            "InternVL's resize to len(tokenizer) is not sourced"),
                     "tie_word_embeddings": (False, _UNTIED)},
    "internvl3_14b": {"vocab_size": (151674, _VOCAB_RULE + "; like InternVL3-1B"),
                      "tie_word_embeddings": (False, "untied like InternVL3-1B")},
    "internvl3_38b": {"vocab_size": (151674, _VOCAB_RULE + "; like InternVL3-1B"),
                      "tie_word_embeddings": (False, "untied like InternVL3-1B")},
    "internvl3_78b": {"tie_word_embeddings": (False, "untied like InternVL3-1B")},
    "internvl3_5_2b": _qwen3("Qwen3-1.7B", 2742, "2.0B", hidden_size=2048, num_hidden_layers=28,
                             num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=6144),
    "internvl3_5_4b": _qwen3("Qwen3-4B", 2763, "4.4B", hidden_size=2560, num_hidden_layers=36,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128, intermediate_size=9728),
    "internvl3_5_14b": _qwen3("Qwen3-14B", 2806, "14.8B", hidden_size=5120, num_hidden_layers=40,
                              num_attention_heads=40, num_key_value_heads=8, head_dim=128, intermediate_size=17408),
    "internvl3_5_38b": _qwen3("Qwen3-32B", 2835, "32.8B", hidden_size=5120, num_hidden_layers=64,
                              num_attention_heads=64, num_key_value_heads=8, head_dim=128, intermediate_size=25600),
}
_241B = (f"backbone assumed Qwen3-235B-A22B ({_QWEN3_FAMILY}; its size matches the README's 235.1B language "
         "parameters), dims of litgpt 0.5.13 litgpt/config.py L2911 "
         "(https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json)")
ASSUMED_TEXT["internvl3_5_241b_a28b"] = {
    "model_type": ("qwen3_moe", _241B), "hidden_size": (4096, _241B), "num_hidden_layers": (94, _241B),
    "num_attention_heads": (64, _241B), "num_key_value_heads": (4, _241B), "head_dim": (128, _241B),
    "intermediate_size": (12288, _241B), "num_experts": (128, _241B), "num_experts_per_tok": (8, _241B),
    "moe_intermediate_size": (1536, _241B), "vocab_size": (151936, _QWEN3_VOCAB),
    "tie_word_embeddings": (False, _QWEN3_UNTIED),
}


def assumed_text_values(name: str) -> dict[str, tuple[Any, str]]:
    """The planner's assumptions for preset `name` (empty for a preset with every dim sourced)."""
    return ASSUMED_TEXT.get(name, {})
