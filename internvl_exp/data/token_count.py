"""Exact token counts at the speed the pre-flight scan needs: per-word memoisation for byte-level BPE.

The scan needs each text's token count, not its ids. The Rust tokenizer spends most of its time building
the `Encoding` (tokens, offsets, byte alignments), ~0.6 us per token. But a byte-level BPE tokenizer
encodes a text as: split off the added tokens (each one id), then split the rest into words with the
pre-tokenizer's regex, then BPE each word on its own. So the count is the number of added tokens plus the
sum of the words' counts, and a word's count can be remembered: text is mostly words seen before.

`WordCounter` does exactly that pipeline in Python, for the texts where it provably gives the same words
as the Rust pipeline, and for the tokenizers whose pipeline it knows:
- texts made only of printable ASCII, tab, newline and carriage return. There, every Unicode-normaliser of
  the allowed kinds is the identity, `\\p{L}` is `[A-Za-z]`, `\\p{N}` is `[0-9]`, and `\\s` is the same in
  Oniguruma (the Rust side) and Python's `re` (with re.ASCII), so the regex gives the same words. Any other
  text goes to the Rust tokenizer whole.
- tokenizers: a BPE model without dropout; no normaliser or only NFC/NFD/NFKC/NFKD; a pre-tokenizer that is
  ByteLevel(add_prefix_space=false), optionally after Split(regex, isolated) steps (GPT-2, Qwen2, Llama-3
  style); added tokens without lstrip/rstrip/single_word; `encode_special_tokens` off; no truncation or
  padding. Anything else (sentencepiece-style Metaspace, a lowercasing normaliser, ...) is counted by the
  Rust tokenizer, as before.
A word's count is the BPE model's own `tokenize` of its byte-level form, the very call the pipeline makes.
tests/test_prescan_fast_count.py checks equality with `encode` on fuzzed text and on every template.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Callable

MEMO_MAX = 400_000  # words remembered per process (~100 bytes each); cleared when full
_OUTSIDE = re.compile(r"[^\t\n\r\x20-\x7e]")  # a character outside the domain where the regexes agree
_IDENTITY_ON_ASCII = {"NFC", "NFD", "NFKC", "NFKD"}
# The regex of ByteLevel(use_regex=true), as the tokenizers crate has it (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def _byte_level_map() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: the character each byte becomes before BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def ascii_pattern(pattern: str) -> re.Pattern | None:
    """An Oniguruma pattern rewritten for ASCII-only input: `\\p{L}` -> A-Za-z, `\\p{N}` -> 0-9 (inside or
    outside a class). None when the pattern uses anything this rewrite does not cover."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt in ("p", "P"):
                prop = pattern[i : i + 5]
                if prop not in (r"\p{L}", r"\p{N}"):
                    return None
                chars = "A-Za-z" if prop == r"\p{L}" else "0-9"
                out.append(chars if in_class else f"[{chars}]")
                i += 5
                continue
            if nxt and nxt not in "sSrntdDwW\\'\"()[]{}|.*+?^$-/!<>=:":
                return None  # \h, \R, \X, \G, backreferences, ...: not rewritten
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" or pattern.startswith("&&", i):
                return None  # nested classes / intersections
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            if pattern[i : i + 1] == "^":
                out.append("^")
                i += 1
            if pattern[i : i + 1] == "]":  # a literal ] first in a class
                out.append(r"\]")
                i += 1
            continue
        elif pattern.startswith(("++", "*+", "?+", "(?>", "(?~"), i):
            return None  # possessive or atomic: valid in Python 3.11, but keep to the plain subset
        elif c in "^$":
            return None  # line anchors in Oniguruma's Ruby syntax, string anchors in Python
        out.append(c)
        i += 1
    try:
        compiled = re.compile("".join(out), re.ASCII)
    except re.error:
        return None
    return None if compiled.match("") is not None else compiled  # an empty match would loop differently


class WordCounter:
    """`count(text)` == len(backend.encode(text, add_special_tokens=False)), memoised per word where exact."""

    def __init__(self, backend: Any):
        self._backend = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)  # tokens added later: a new counter
        self._memo: dict[str, int] = {}  # word -> count
        self._texts: dict[str, int] = {}  # short text -> count
        self._splitters: list[re.Pattern] | None = None
        self._added: re.Pattern | None = None
        self._find: Callable[[str], list[str]] | None = None
        self.fast = self._setup(json.loads(backend.to_str()))

    # --- what the tokenizer is ---------------------------------------------------------------------

    def _setup(self, spec: dict) -> bool:
        b = self._backend
        model = spec.get("model") or {}
        if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
            return False
        if getattr(b, "encode_special_tokens", False) or b.truncation is not None or b.padding is not None:
            return False
        if not self._normaliser_ok(spec.get("normalizer")):
            return False
        splitters = self._pre_tokenizer(spec.get("pre_tokenizer"))
        if splitters is None:
            return False
        added = spec.get("added_tokens") or []
        if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
            return False
        contents = sorted({t["content"] for t in added if t["content"]}, key=len, reverse=True)
        # Longest first: Python's alternation then takes, at the leftmost match, the longest token, like
        # the tokenizers crate's leftmost-longest automaton. (Normalised and raw added tokens split the
        # same text here: the normaliser is the identity on the ASCII domain.)
        self._added = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None
        self._splitters = splitters
        only = splitters[0] if len(splitters) == 1 else None
        self._find = only.findall if only is not None and only.groups == 0 else None
        self._to_bytes = _byte_level_map()
        return True

    @staticmethod
    def _normaliser_ok(n: dict | None) -> bool:
        if n is None:
            return True
        if n.get("type") == "Sequence":
            return all(WordCounter._normaliser_ok(x) for x in n.get("normalizers", []))
        return n.get("type") in _IDENTITY_ON_ASCII

    @staticmethod
    def _pre_tokenizer(p: dict | None) -> list[re.Pattern] | None:
        """The regexes that cut a text into words, in order; None for a pipeline this class does not know."""
        steps = p.get("pretokenizers", []) if p and p.get("type") == "Sequence" else [p]
        if not steps or not steps[-1] or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
            return None
        out = []
        for s in steps[:-1]:
            if s.get("type") != "Split" or s.get("behavior") != "Isolated" or s.get("invert"):
                return None
            pat = s.get("pattern", {})
            if "Regex" in pat:
                compiled = ascii_pattern(pat["Regex"])
            elif "String" in pat and pat["String"]:
                compiled = re.compile(re.escape(pat["String"]))
            else:
                compiled = None
            if compiled is None:
                return None
            out.append(compiled)
        if steps[-1].get("use_regex", True):
            out.append(ascii_pattern(GPT2_PATTERN))
        return out

    # --- counting ----------------------------------------------------------------------------------

    def count(self, text: str) -> int:
        n = self._texts.get(text)  # short texts recur whole: the system prompt, role headers, "\n"
        if n is not None:
            return n
        if self.fast and _OUTSIDE.search(text) is None:
            parts = self._added.split(text) if self._added is not None else [text]  # [text, token, text, ...]
            n = len(parts) >> 1
            find, getitem = self._find, self._memo.__getitem__
            for part in parts[::2]:
                if not part:
                    continue
                if find is not None:  # one regex (the usual case), inlined: this runs ~10 times a line
                    words = find(part)
                    if sum(map(len, words)) == len(part):  # no gaps between the matches
                        try:
                            n += sum(map(getitem, words))
                            continue
                        except KeyError:
                            pass
                n += self._count_words(part)
        else:
            n = len(self._backend.encode(text, add_special_tokens=False))
        if len(text) <= 512:
            if len(self._texts) > 20_000:
                self._texts.clear()
            self._texts[text] = n
        return n

    def _count_words(self, text: str) -> int:
        words = self._words(text)
        try:
            return sum(map(self._memo.__getitem__, words))
        except KeyError:
            memo = self._memo
            if len(memo) > MEMO_MAX:
                memo.clear()
            return sum(memo[w] if w in memo else self._learn(w) for w in words)

    def _words(self, text: str) -> list[str]:
        if len(self._splitters) == 1:
            return _isolated(self._splitters[0], text)
        pieces = [text]
        for rx in self._splitters:
            pieces = [w for piece in pieces for w in _isolated(rx, piece)]
        return pieces

    def _learn(self, word: str) -> int:
        to = self._to_bytes
        n = self._memo[word] = len(self._backend.model.tokenize("".join(to[b] for b in word.encode("ascii"))))
        return n


def _isolated(rx: re.Pattern, text: str) -> list[str]:
    """Split(behavior=isolated): each match is a piece, and so is each stretch between matches."""
    words = rx.findall(text) if rx.groups == 0 else [m.group() for m in rx.finditer(text)]
    if sum(map(len, words)) == len(text):  # the matches cover the text (the usual case): no gaps
        return words
    out, at = [], 0
    for m in rx.finditer(text):
        if m.start() > at:
            out.append(text[at : m.start()])
        out.append(m.group())
        at = m.end()
    if at < len(text):
        out.append(text[at:])
    return out

