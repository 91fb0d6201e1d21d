"""Answer scores: exact match, and a relaxed match on normalised text as VQA scorers normalise answers
(lowercase, punctuation and the articles a/an/the removed, whitespace collapsed)."""

from __future__ import annotations

import re
import string
from typing import Iterable

_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> bool:
    return prediction.strip() == reference.strip()


def relaxed_match(prediction: str, reference: str) -> bool:
    return normalise(prediction) == normalise(reference)


def scores(pairs: Iterable[tuple[str, str]]) -> dict[str, float | int]:
    """{samples, exact_match, relaxed_match} over (prediction, reference) pairs, as fractions."""
    pairs = list(pairs)
    n = len(pairs)
    return {
        "samples": n,
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n if n else 0.0,
        "relaxed_match": sum(relaxed_match(p, r) for p, r in pairs) / n if n else 0.0,
    }
