"""The tiny model's tokenizer: a byte-level BPE trained offline, shipped as a small generated file.

Regenerate the shipped copy with ``python -m internvl_exp.models.tiny_tokenizer`` (deterministic).
The tokenizer carries InternVL's special tokens and the four named image tokens that transformers'
``InternVLProcessor`` needs, so the saved processor works end to end without the Hub.
"""

from __future__ import annotations

from pathlib import Path

from internvl_exp.data.demo import COLOURS, SHAPES, corpus_sentences
from internvl_exp.data.templates import TEMPLATES

ASSET_DIR = Path(__file__).parent / "assets" / "tiny_tokenizer"

# Order matters: these get the first ids, so they are stable across regenerations.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<s>",
]
VOCAB_SIZE = 1024

NAMED_IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def _corpus() -> list[str]:
    """Text the BPE merges are learnt from: the demo vocabulary plus ordinary English."""
    lines = list(corpus_sentences())
    # The templates' default system messages appear in every sample: give them merges.
    lines += [t.system_message for t in TEMPLATES.values()] * 8
    lines += ["user", "assistant", "system", "user\n", "assistant\n", "system\n"]
    lines += [f"The {c} {s}." for c in COLOURS for s in SHAPES]
    lines += [
        "What is shown in the image? Describe it briefly.",
        "How many objects are there? There are three objects.",
        "Which image has more shapes, the first or the second?",
        "Hello! How are you today? I am fine, thank you.",
        "The quick brown fox jumps over the lazy dog.",
        "Answer with a single word. Yes. No.",
        "0 1 2 3 4 5 6 7 8 9 10",
    ]
    return lines * 4


def build_tiny_tokenizer():
    """Train the BPE in-process and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        model_max_length=4096,
        extra_special_tokens=dict(NAMED_IMAGE_TOKENS),
    )


def load_tiny_tokenizer():
    """Load the shipped tokenizer (fast: no training)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ASSET_DIR))


def main() -> None:
    tok = build_tiny_tokenizer()
    ASSET_DIR.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(ASSET_DIR))
    print(f"wrote {ASSET_DIR} (vocab {len(tok)})")


if __name__ == "__main__":
    main()
