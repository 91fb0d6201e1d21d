"""The source's tokenizer as a transformers fast tokenizer that knows InternVL's named image tokens.

transformers' InternVLProcessor reads `start_image_token`, `end_image_token`, `context_image_token` and
`video_token` (and their `_id`s) from the tokenizer, so they are saved as named special tokens.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from internvl_exp.models.convert.source import ConversionError

IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}
VIDEO_TOKEN = "<video>"


def _named_tokens(tok: Any, src: Path) -> dict[str, str]:
    vocab = tok.get_vocab()
    missing = [t for t in IMAGE_TOKENS.values() if t not in vocab]
    if missing:
        raise ConversionError(f"{src}: the tokenizer has no {', '.join(missing)} token(s); this is not an InternVL tokenizer")
    # Original checkpoints have no <video> token, but the native processor needs a distinct one (it counts video
    # placeholders separately from image ones). It is only a placeholder in prompt text: the processor replaces it
    # with <img><IMG_CONTEXT>...</img> per frame before tokenisation reaches the model, so an id past the
    # embedding table (it is appended when absent) is never fed to the model.
    return {**IMAGE_TOKENS, "video_token": VIDEO_TOKEN}

def load_source_tokenizer(src: Path) -> Any:
    """A PreTrainedTokenizerFast from tokenizer.json (or InternLM2's sentencepiece tokenizer.model), with the
    named image tokens set. Never AutoTokenizer on the source: its config.json points at remote code."""
    from transformers import PreTrainedTokenizerFast

    if (src / "tokenizer.json").is_file():
        plain = PreTrainedTokenizerFast.from_pretrained(str(src))
        return PreTrainedTokenizerFast.from_pretrained(str(src), extra_special_tokens=_named_tokens(plain, src))
    if (src / "tokenizer.model").is_file():
        try:
            from internvl_exp.models.convert.sentencepiece import sentencepiece_to_fast
        except ImportError as e:
            raise ConversionError(
                f"{src / 'tokenizer.model'}: converting a sentencepiece tokenizer needs "
                f"internvl_exp.models.convert.sentencepiece, which could not be imported ({e})"
            ) from None

        fast = sentencepiece_to_fast(src)
        with tempfile.TemporaryDirectory() as tmp:
            fast.save_pretrained(tmp)
            return PreTrainedTokenizerFast.from_pretrained(tmp, extra_special_tokens=_named_tokens(fast, src))
    raise ConversionError(f"{src}: no tokenizer.json or tokenizer.model; copy the checkpoint's tokenizer files too")


def image_token_id(tok: Any) -> int:
    return int(tok.convert_tokens_to_ids(IMAGE_TOKENS["context_image_token"]))
