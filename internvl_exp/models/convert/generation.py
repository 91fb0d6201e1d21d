"""generation_config.json for the converted model: the chat end-of-turn token as eos, per LLM family.

The LLM's own config often names the pretraining eos (InternLM2 `</s>`=2, Qwen `<|endoftext|>`), which a chat
model never emits; generation must stop at the end-of-turn token instead (InternLM2/Qwen `<|im_end|>`).
The source's own generation_config.json wins when it has one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from internvl_exp.models.convert.llm_keys import Family


def generation_eos(src: Path, family: Family, tokenizer: Any) -> list[int]:
    own = src / "generation_config.json"
    if own.is_file():
        eos = json.loads(own.read_text()).get("eos_token_id")
        if eos is not None:
            return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in family.stop_tokens if t in vocab]
    if not ids and tokenizer.eos_token_id is not None:
        ids = [int(tokenizer.eos_token_id)]
    return ids


def write_generation_config(dst: Path, src: Path, family: Family, tokenizer: Any, text_config: dict) -> list[int]:
    from transformers import GenerationConfig

    eos = generation_eos(src, family, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else text_config.get("pad_token_id")
    gen = GenerationConfig(
        eos_token_id=eos[0] if len(eos) == 1 else eos,
        pad_token_id=pad,
        bos_token_id=text_config.get("bos_token_id"),
    )
    gen.save_pretrained(str(dst))
    return eos
