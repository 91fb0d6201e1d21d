"""A sample's tokens for the terminal (data_check --show, for SFT lines and for pairs)."""

from __future__ import annotations

from typing import Sequence

from internvl_exp.data.templates import IGNORE_INDEX, IMG_CONTEXT


def token_text(ids: Sequence[int], labels: Sequence[int], tokenizer, marks: bool):
    """Tokens as rich Text: supervised stretches bold green (or [[bracketed]] when `marks`), image spans collapsed."""
    from rich.text import Text

    ctx = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    text = Text()
    i = 0
    while i < len(ids):
        if ids[i] == ctx:
            j = i
            while j < len(ids) and ids[j] == ctx:
                j += 1
            text.append(f"{IMG_CONTEXT}×{j - i}", style="magenta")
            i = j
            continue
        sup = labels[i] != IGNORE_INDEX
        j = i
        while j < len(ids) and ids[j] != ctx and (labels[j] != IGNORE_INDEX) == sup:
            j += 1
        piece = tokenizer.decode(ids[i:j])
        text.append(f"[[{piece}]]" if sup and marks else piece, style="bold green" if sup else "dim")
        i = j
    return text
