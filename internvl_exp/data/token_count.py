"""Exact token counts at the speed the pre-flight scan needs: the tokenizer's own pipeline in Python, memoised.

The scan needs each text's token count, not its ids. The Rust tokenizer spends most of its time building
the `Encoding` (tokens, offsets, byte alignments), and BPE over a long word (a sentencepiece tokenizer's
whole sentence) is slow. But a BPE tokenizer encodes a text as: split off the added tokens (each one id),
normalise each piece between them, cut it into words with the pre-tokenizer, then BPE each word on its own.
So the count is the number of added tokens plus the words' counts, and a word's count can be remembered.

`WordCounter` runs that pipeline in Python where it provably cuts the text exactly as the Rust pipeline does:
- added tokens: split out longest-first at the leftmost match (the crate's leftmost-longest automaton), the
  non-normalised ones on the raw text, then the normalised ones on each normalised piece, as the crate does;
  none may have lstrip/rstrip/single_word.
- normalisers: none; NFC/NFD/NFKC/NFKD (the identity on ASCII text, else the Rust normaliser's own
  `normalize_str`); Replace(string) and Prepend (sentencepiece's "▁" escapes) in Python; anything else
  through the Rust `normalize_str` (exact by construction).
- pre-tokenizers: ByteLevel(add_prefix_space=false) after optional Split(regex, isolated) steps (GPT-2,
  Qwen2, Llama-3); Metaspace (any prepend scheme, split or not); Split steps whose regex is a list of
  literals (sentencepiece's user-defined pieces); none at all (the legacy Llama/Phi-3 and our InternLM2
  conversion). The regexes run on the text with every character outside printable ASCII replaced by an
  ASCII stand-in of its class (letter, number, whitespace, other) *as the Rust engine classifies it*:
  each new character is classified once by the Rust regex engine itself (`_CharClasses`), so Python's
  `re` sees the same sequence of classes and cuts at the same places. Characters a case-insensitive
  literal could match (the long s of `(?i:'s)`) send the text to the Rust tokenizer whole.
- model: BPE without dropout or subword prefixes/suffixes.
A word is then cut further where no token can cross, provably:
- before a run of "▁" that follows a character no vocabulary string has right before a "▁" (for a
  sentencepiece vocabulary, every word boundary): every symbol BPE forms is a vocabulary string.
- between two characters no merge (a, b) can join: BPE joins neighbours only by merging a symbol `a` that
  ends right before the cut with a symbol `b` that starts right after it, so where no merge has `a` ending
  as the text before does and `b` starting as the text after does (sentencepiece: a's last character and
  b's first; byte-level: a's last byte is the left character's last UTF-8 byte and b's first byte the right
  one's first), no token ever spans the cut. Only between characters that are tokens of their own (no
  byte-fallback or unknown symbols; byte-level: every byte is a token).
Short words are memoised (English, Cyrillic, code recur). Long CJK words (no spaces: a regex "word" is a
clause) are counted as the sum of their characters alone plus a correction for each run of joinable ones
(memoised per run); when a sample shows the vocabulary joins most neighbours (a sentencepiece model trained
on CJK), each such word goes to the BPE model whole. Byte-level text with characters outside ASCII is
counted a whole text at a time, in C but for each new run's BPE: its words joined by a character no merge
touches, one token per UTF-8 byte, plus a remembered correction for each maximal run of characters that may
join and each character whose own bytes may merge, all found by one regex (`_byte_level_runs`).
With `ignore_merges` (Llama-3), a word that is a vocabulary entry is one token; cut words are counted with
the same merges without it. Any other tokenizer, or text, is counted by the Rust tokenizer (`encode_batch_fast`:
the same ids, no offsets).
tests/test_prescan_fast_count.py checks equality with `encode` on fuzzed mixed-script text for each family.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from itertools import accumulate, compress, count
from typing import Any, Callable

MEMO_MAX = 400_000  # words remembered per process (~100 bytes each); cleared when full
# Byte-level runs remembered (up to 64 characters each): with a vocabulary of many CJK merges most clauses are
# one run, seen once, so fewer are kept than words.
RUN_MEMO_MAX = 100_000
_SPACE = "\u2581"  # sentencepiece's "▁"
_OUTSIDE = re.compile(r"[^\t\n\r\x20-\x7e]")  # a character the regex rewrite does not cover as it is
# Scripts written without spaces between words (CJK and on), and emoji: their regex "words" are clauses.
_UNSPACED = re.compile("[\u2e80-\U0010ffff]")
_IDENTITY_ON_ASCII = {"NFC", "NFD", "NFKC", "NFKD"}
# The regex of ByteLevel(use_regex=true), as the tokenizers crate has it (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[int, str]:
    """`_byte_level_map` for str.translate over a latin-1 decoded byte string."""
    return {b: c for b, c in _byte_level_map().items()}


def byte_level(word: str) -> str:
    """The string the BPE model of a ByteLevel pipeline sees for `word` (each UTF-8 byte mapped)."""
    return word.encode("utf-8").decode("latin-1").translate(_byte_level_table())


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


def ascii_pattern(pattern: str, literals: set[str] | None = None) -> re.Pattern | None:
    """An Oniguruma pattern rewritten for ASCII-only input: `\\p{L}` -> A-Za-z, `\\p{N}` -> 0-9 (inside or
    outside a class). None when the pattern uses anything this rewrite does not cover. Every character the
    pattern could match literally is added to `literals` (both cases: the pattern may be case-insensitive)."""
    out, i, in_class = [], 0, False
    lits: set[str] = set()
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
            if nxt and nxt not in "sSrnt\\'\"()[]{}|.*+?^$-/!<>=:":
                return None  # \d, \w, \h, \R, \X, \G, backreferences, ...: classes this rewrite does not map
            lits.add({"r": "\r", "n": "\n", "t": "\t"}.get(nxt, nxt) if nxt not in "sS" else "")
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
                lits.add("]")
                i += 1
            continue
        elif pattern.startswith(("++", "*+", "?+", "(?>", "(?~"), i):
            return None  # possessive or atomic: valid in Python 3.11, but keep to the plain subset
        elif c in "^$":
            return None  # line anchors in Oniguruma's Ruby syntax, string anchors in Python
        if ord(c) > 0x7E:
            return None  # a non-ASCII literal: the class stand-ins below could not tell it apart
        lits.add(c)  # conservative: syntax characters and quantifier digits count as literals too
        out.append(c)
        i += 1
    try:
        compiled = re.compile("".join(out), re.ASCII)
    except re.error:
        return None
    if compiled.match("") is not None:
        return None  # an empty match would loop differently
    if literals is not None:
        literals |= {x for c in lits for x in (c.lower(), c.upper())}
    return compiled


def _literal_alternation(pattern: str) -> list[str] | None:
    """The literals of a regex that is only `lit|lit|...` with punctuation escaped (re.escape's output, as
    sentencepiece conversions write user-defined pieces); None for anything else."""
    out, cur, i = [], [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if not nxt or nxt.isalnum() or nxt == "_":
                return None  # \s, \d, \p, \1, ...
            cur.append(nxt)
            i += 2
            continue
        if c == "|":
            out.append("".join(cur))
            cur = []
        elif c in "()[]{}.*+?^$":
            return None
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return None if any(not x for x in out) else out


class _CharClasses:
    """Maps every character outside printable ASCII to an ASCII stand-in of its class, as Oniguruma (the
    Rust side's regex engine) classifies it: letter (\\p{L}), number (\\p{N}), whitespace (\\s), other; or to
    None when a case-insensitive ASCII literal could match it. Each new character is asked to the Rust
    engine once (three `Replace` normalisers over all new characters at a time)."""

    def __init__(self, literals: set[str]):
        from tokenizers import Regex, normalizers

        def pick(candidates: str) -> str | None:
            return next((c for c in candidates if c not in literals), None)

        self.reps = {"L": pick("xqzjkwyfgbhXQZJKWYFGBH"), "N": pick("0123456789"), "S": pick("\t\x0b\x0c"),
                     "O": pick("#%&@~`;,")}
        self.ok = all(self.reps.values())
        # What may remain after the mapping: printable ASCII, \t\n\r, and the stand-ins themselves.
        self._left = re.compile("[^\t\n\r\x20-\x7e" + "".join(re.escape(c) for c in self.reps.values() if c) + "]")
        self._probes = [(k, normalizers.Replace(Regex(rx), "\x01")) for k, rx in
                        (("C", "(?i:" + "|".join("abcdefghijklmnopqrstuvwxyz") + ")"), ("L", r"\p{L}"), ("N", r"\p{N}"), ("S", r"\s"))]
        self.table: dict[int, str] = {}  # ord -> stand-in, for str.translate
        self.unsafe: set[str] = set()

    def map(self, text: str) -> str | None:
        """`text` with every classified character replaced by its stand-in; None if one cannot be."""
        mapped = text.translate(self.table)
        if self._left.search(mapped) is None:
            return mapped
        fresh = {c for c in set(text) if _OUTSIDE.match(c) and ord(c) not in self.table} - self.unsafe
        if fresh:
            self._learn(sorted(fresh))
            mapped = text.translate(self.table)
            if self._left.search(mapped) is None:
                return mapped
        return None

    def _learn(self, chars: list[str]) -> None:
        hits: dict[str, set[str]] = {}
        try:
            for k, probe in self._probes:
                out = probe.normalize_str("".join(chars))
                if len(out) != len(chars):  # a match over several characters: ask one character at a time
                    out = [probe.normalize_str(c) for c in chars]
                hits[k] = {c for c, m in zip(chars, out) if m == "\x01"}
        except Exception:  # a lone surrogate, ...: leave such text to the Rust tokenizer
            self.unsafe.update(chars)
            return
        for c in chars:
            kinds = [k for k in "LNS" if c in hits[k]]
            if c in hits["C"] or len(kinds) > 1:
                self.unsafe.add(c)
            else:
                self.table[ord(c)] = self.reps[kinds[0] if kinds else "O"]


class WordCounter:
    """`count(text)` == len(backend.encode(text, add_special_tokens=False)), memoised per word where exact."""

    def __init__(self, backend: Any):
        self._backend = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)  # tokens added later: a new counter
        self._texts: dict[str, int] = {}  # short text -> count
        self._words: dict[str, int] = {}  # word (before the byte-level map) -> count
        self._runs: dict[str, int] = {}  # piece of a word between safe cuts -> count with plain merges
        self._sampled = [0, 0]  # characters of words counted once, and the joins among them
        self._whole_words = False
        self._encode_fast = getattr(backend, "encode_batch_fast", None)
        self.fast = self._setup(json.loads(backend.to_str()))

    # --- what the tokenizer is ---------------------------------------------------------------------

    def _setup(self, spec: dict) -> bool:
        b = self._backend
        model = spec.get("model") or {}
        if model.get("type") != "BPE" or model.get("dropout") not in (None, 0, 0.0):
            return False
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            return False
        if getattr(b, "encode_special_tokens", False) or b.truncation is not None or b.padding is not None:
            return False
        added = spec.get("added_tokens") or []
        if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
            return False
        self._added_raw = self._alternation([t["content"] for t in added if not t.get("normalized")])
        self._added_norm = self._alternation([t["content"] for t in added if t.get("normalized")])
        if not self._normaliser(spec.get("normalizer")):
            return False
        literals: set[str] = set()
        if not self._pre_tokenizer(spec.get("pre_tokenizer"), literals):
            return False
        self._classes = _CharClasses(literals) if self._regex_steps else None
        if self._classes is not None and not self._classes.ok:
            self._classes = None

        # The model, and a copy with plain merges for cut words (see the module docstring).
        self._ignore_merges = bool(model.get("ignore_merges"))
        from tokenizers import Tokenizer

        if self._ignore_merges:  # a copy without it: cut words must be BPE'd all the way
            bare = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                    "pre_tokenizer": None, "post_processor": None, "decoder": None,
                    "model": dict(model, ignore_merges=False)}
            self._model = Tokenizer.from_str(json.dumps(bare)).model
        else:
            self._model = b.model
        vocab = model.get("vocab") or {}
        self._vocab = vocab
        self._coarse = None
        # Before a "▁" run after a character no vocabulary string has right before a "▁".
        if not self._byte_level and _SPACE in vocab:
            before_space = {s[i - 1] for s in vocab for i in range(1, len(s)) if s[i] == _SPACE and s[i - 1] != _SPACE}
            if not before_space:
                self._coarse = re.compile(f"{_SPACE}*[^{_SPACE}]+|{_SPACE}+").findall
        # Where BPE can join two neighbouring characters: only where some merge (a, b) has `a` ending like the
        # text before and `b` starting like the text after (see _plain_total).
        merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges") or []]
        self._singles = {v for v in vocab if len(v) == 1}
        self._pairs: Any = None
        self._byte_runs: Callable[[str], list[str]] | None = None
        if self._byte_level:
            if set(_byte_level_map().values()) <= self._singles:  # else a byte is no token of its own: no cuts
                self._byte_runs, self._separator = _byte_level_runs(merges)
                self._pairs = self._byte_runs is not None
        else:
            self._pairs = {a[-1] + b[0] for a, b in merges if a and b}
        # Non-ASCII text's words counted together by their runs (not with ignore_merges: there a word that is
        # a vocabulary entry is one token, which only the per-word path knows).
        self._text_runs = bool(self._pairs) and self._byte_level and not self._ignore_merges
        self._text_lane = (self._text_runs and self._find is not None and self._added_norm is None
                           and self._classes is not None)
        self._char_counts = _LazyTable(lambda c: len(self._model.tokenize(byte_level(c) if self._byte_level else c)), key=str)
        # Byte-level: per run of characters that may join (or a single character whose bytes may merge), its BPE
        # count less its UTF-8 length; kept for short runs.
        self._run_corrections = _LazyTable(
            lambda run: len(self._model.tokenize(byte_level(run))) - len(run.encode("utf-8")),
            key=str, keep=lambda run: len(run) <= 64)
        return True

    @staticmethod
    def _alternation(contents: list[str]) -> re.Pattern | None:
        # Longest first: Python's alternation then takes, at the leftmost match, the longest token, like the
        # tokenizers crate's leftmost-longest automaton.
        contents = sorted({c for c in contents if c}, key=len, reverse=True)
        return re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None

    def _normaliser(self, n: dict | None) -> bool:
        """Sets `self._norm` (str -> str) and `self._norm_ascii_identity`."""
        steps = (n.get("normalizers", []) if n.get("type") == "Sequence" else [n]) if n else []
        self._norm_ascii_identity = all(s.get("type") in _IDENTITY_ON_ASCII for s in steps)
        if not steps:
            self._norm = None
            return True
        simple = []
        for s in steps:
            pat = s.get("pattern") or {}
            if s.get("type") == "Replace" and "String" in pat and pat["String"]:
                simple.append((pat["String"], s.get("content", "")))
            elif s.get("type") == "Prepend":
                simple.append((None, s.get("prepend", "")))
            else:
                simple = None
                break
        if simple is None:  # the crate's own normaliser, one call per piece: exact
            rust = self._backend.normalizer.normalize_str
            self._norm = rust
            return True

        def norm(text: str) -> str:
            for old, new in simple:
                if old is not None:
                    text = text.replace(old, new)
                elif text:  # the crate's Prepend leaves an empty string empty
                    text = new + text
            return text

        self._norm = norm
        return True

    def _pre_tokenizer(self, p: dict | None, literals: set[str]) -> bool:
        """Sets `self._steps` ([(kind, arg)]), `self._byte_level`, `self._regex_steps`."""
        steps = (p.get("pretokenizers", []) if p.get("type") == "Sequence" else [p]) if p else []
        self._steps: list[tuple[str, Any]] = []
        self._byte_level = False
        self._regex_steps = False
        for k, s in enumerate(steps):
            kind = s.get("type")
            if kind == "ByteLevel":
                if k != len(steps) - 1 or s.get("add_prefix_space"):
                    return False
                self._byte_level = True
                if s.get("use_regex", True):
                    self._steps.append(("regex", ascii_pattern(GPT2_PATTERN, literals)))
                    self._regex_steps = True
            elif kind == "Split":
                if s.get("behavior") != "Isolated" or s.get("invert"):
                    return False
                pat = s.get("pattern", {})
                lits = _literal_alternation(pat["Regex"]) if "Regex" in pat else ([pat["String"]] if pat.get("String") else None)
                if lits is not None:  # literals match the same in both engines, on any text
                    self._steps.append(("literal", re.compile("|".join(map(re.escape, lits)))))
                    continue
                if "Regex" not in pat:
                    return False
                compiled = ascii_pattern(pat["Regex"], literals)
                if compiled is None:
                    return False
                self._steps.append(("regex", compiled))
                self._regex_steps = True
            elif kind == "Metaspace":
                rep = s.get("replacement", _SPACE)
                scheme = s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never")
                if len(rep) != 1 or scheme not in ("always", "first", "never"):
                    return False
                split = re.compile(f"{re.escape(rep)}[^{re.escape(rep)}]*|[^{re.escape(rep)}]+").findall
                self._steps.append(("metaspace", (rep, scheme, split if s.get("split", True) else None)))
            else:
                return False
        # The common layouts get a single-regex fast lane (the English byte-level case runs it ~10 times a line).
        only = self._steps[0][1] if len(self._steps) == 1 and self._steps[0][0] == "regex" else None
        self._find = only.findall if only is not None and only.groups == 0 else None
        return True

    # --- counting ----------------------------------------------------------------------------------

    def count(self, text: str) -> int:
        n = self._texts.get(text)  # short texts recur whole: the system prompt, role headers, "\n"
        if n is not None:
            return n
        n = self._count(text) if self.fast else None
        if n is None:
            n = self._rust_count(text)
        if len(text) <= 512:
            if len(self._texts) > 20_000:
                self._texts.clear()
            self._texts[text] = n
        return n

    def _rust_count(self, text: str) -> int:
        if self._encode_fast is not None:
            return len(self._encode_fast([text], add_special_tokens=False)[0])
        return len(self._backend.encode(text, add_special_tokens=False))

    def _count(self, text: str) -> int | None:
        """The count through the Python pipeline, or None when this text must go to the Rust tokenizer."""
        ascii_text = _OUTSIDE.search(text) is None
        if not ascii_text and self._text_lane:
            n = self._count_text_runs(text)
            if n is not None:
                return n
        parts = self._added_raw.split(text) if self._added_raw is not None else [text]  # [text, token, text, ...]
        n = len(parts) >> 1
        find, words_memo = self._find, self._words
        lane = find is not None and self._added_norm is None  # one regex, no normalised added tokens
        for k in range(0, len(parts), 2):
            part = parts[k]
            if not part:
                continue
            if lane and ascii_text and self._norm_ascii_identity:
                words = find(part)  # the usual case, inlined: this runs ~10 times a line
                if sum(map(len, words)) == len(part):  # no gaps between the matches
                    try:
                        n += sum(map(words_memo.__getitem__, words))
                        continue
                    except KeyError:
                        n += self._count_words(words)
                        continue
            if self._norm is not None and not (ascii_text and self._norm_ascii_identity):
                part = self._norm(part)
            if lane and self._classes is not None:  # the same on the class stand-ins, sliced back
                mapped = self._classes.map(part)
                if mapped is None:
                    return None
                lengths = list(map(len, find(mapped)))
                if sum(lengths) == len(part):
                    ends = list(accumulate(lengths))
                    words = [part[a:b] for a, b in zip([0] + ends, ends)]
                    # Byte-level: the whole text's words in one pass (its runs remembered, not its words: a
                    # CJK word is a clause, rarely seen twice).
                    n += self._byte_level_total(words) if self._text_runs else self._count_words(words)
                    continue
            pieces = self._added_norm.split(part) if self._added_norm is not None else [part]
            n += len(pieces) >> 1
            for j in range(0, len(pieces), 2):
                if not pieces[j]:
                    continue
                words = self._pre_tokenize(pieces[j], first=(k == 0 and j == 0))
                if words is None:
                    return None
                n += self._count_words(words)
        return n

    def _count_text_runs(self, text: str) -> int | None:
        """`_count` for text outside ASCII in the byte-level single-regex lane: the words of every piece between
        added tokens (cut on the class stand-ins, sliced back) counted together by `_byte_level_total`. None
        when the stand-ins do not cover the text or the regex leaves gaps (then the general path decides)."""
        parts = self._added_raw.split(text) if self._added_raw is not None else [text]
        words: list[str] = []
        find, norm, classes = self._find, self._norm, self._classes
        for part in parts[::2]:
            if not part:
                continue
            if norm is not None:
                part = norm(part)
            mapped = classes.map(part)
            if mapped is None:
                return None
            ends = list(accumulate(map(len, find(mapped))))
            if not ends or ends[-1] != len(part):  # gaps between the matches
                return None
            words += [part[a:b] for a, b in zip([0, *ends], ends)]
        return (len(parts) >> 1) + (self._byte_level_total(words) if words else 0)

    def _pre_tokenize(self, text: str, first: bool) -> list[str] | None:
        pieces = [text]
        mapped: list[str] | None = None  # the class stand-ins of `pieces`, once a regex step needs them
        for kind, arg in self._steps:
            if kind == "regex":
                if mapped is None:
                    if _OUTSIDE.search(text) is None and all(_OUTSIDE.search(p) is None for p in pieces):
                        mapped = pieces
                    elif self._classes is None:
                        return None
                    else:
                        mapped = [self._classes.map(p) for p in pieces]
                        if any(m is None for m in mapped):
                            return None
                new, new_mapped = [], []
                for piece, m in zip(pieces, mapped):
                    spans = _isolated_spans(arg, m)
                    if m is piece:
                        cut = [piece[a:b] for a, b in spans]
                        new += cut
                        new_mapped += cut
                    else:
                        new += [piece[a:b] for a, b in spans]
                        new_mapped += [m[a:b] for a, b in spans]
                pieces, mapped = new, new_mapped
            elif kind == "literal":
                pieces = [w for p in pieces for w in _isolated(arg, p)]
                mapped = None
            else:  # metaspace
                rep, scheme, split = arg
                pieces = [p.replace(" ", rep) for p in pieces]
                if pieces and (scheme == "always" or (scheme == "first" and first)):
                    if not pieces[0].startswith(rep):
                        pieces[0] = rep + pieces[0]
                    if scheme == "always":
                        pieces = [pieces[0]] + [p if p.startswith(rep) else rep + p for p in pieces[1:]]
                if split is not None:
                    pieces = [w for p in pieces for w in split(p)]
                mapped = None
        return [p for p in pieces if p]

    def _count_words(self, words: list[str]) -> int:
        memo = self._words
        if self._coarse is not None:  # sentencepiece: the words' chunks are what is remembered
            if self._ignore_merges:
                whole = sum(w in self._vocab for w in words)
                if whole:
                    return whole + self._count_words([w for w in words if w not in self._vocab])
            coarse = self._coarse
            words = coarse(words[0]) if len(words) == 1 else [c for w in words for c in coarse(w)]
        try:
            return sum(map(memo.__getitem__, words))
        except KeyError:
            pass
        if len(memo) > MEMO_MAX:
            memo.clear()
        missing = [w for w in dict.fromkeys(words) if w not in memo]
        if self._ignore_merges and self._coarse is None:  # a whole word in the vocabulary is one token
            for w in missing:
                if (byte_level(w) if self._byte_level else w) in self._vocab:
                    memo[w] = 1
            missing = [w for w in missing if w not in memo]
        # Short words recur (English, Cyrillic, code): learnt one by one. The rest (a CJK clause, a sentencepiece
        # sentence) rarely does: counted together, only their runs remembered.
        for w in missing:
            if len(w) <= 32 and _UNSPACED.search(w) is None:
                memo[w] = self._plain_total([w])
        once = [w for w in words if w not in memo]
        return (self._count_once(once) if once else 0) + sum(memo[w] for w in words if w in memo)

    def _count_once(self, words: list[str]) -> int:
        """Words not worth remembering. Cut into runs where that pays: with a vocabulary that merges most
        neighbouring characters of this text (a sentencepiece model trained on CJK: most of them) the runs are
        the words again, so after a sample of the text each word goes to the BPE model whole."""
        if self._whole_words:
            tokenize = self._model.tokenize
            return sum(len(tokenize(byte_level(w) if self._byte_level else w)) for w in words)
        n = self._plain_total(words, sample=True)
        if self._sampled[0] > 20_000:
            self._whole_words = self._sampled[1] > 0.3 * self._sampled[0]
        return n

    def _plain_total(self, words: list[str], sample: bool = False) -> int:
        """The BPE count of `words` (each before the byte-level map, each on its own) with plain merges.

        BPE joins two neighbouring symbols only by a merge (a, b) of a symbol `a` ending right before the cut and
        a symbol `b` starting right after it. Where no merge has `a` ending as the text before does and `b`
        starting as the text after does (sentencepiece: a's last character and b's first; byte-level: their
        bytes, as far as the two characters go), no token ever spans the cut, so the pieces count apart
        exactly. (Only between characters that are tokens of their own: none of byte fallback's symbols.)
        Counted as: every character alone (remembered per character), corrected for each run of characters that
        may join (counted whole, remembered per run). In CJK text with a vocabulary of few CJK merges most
        characters stand alone, and only the joins cost Python time."""
        pairs = self._pairs
        if len(self._char_counts) > MEMO_MAX:
            self._char_counts.clear()
        if not pairs:
            return sum(self._run_count(w) for w in words)
        if self._byte_level:  # every byte symbol is a token of its own (checked once)
            return self._byte_level_total(words)
        text = "".join(words) if len(words) > 1 else words[0]
        if self._singles.issuperset(text):
            joins = list(compress(count(1), map(pairs.__contains__, map(str.__add__, text[:-1], text[1:]))))
        else:  # a character that is no token of its own (byte fallback, unknown): never cut next to it
            singles = self._singles
            joins = [i for i, (a, b) in enumerate(zip(text, text[1:]), 1)
                     if a + b in pairs or a not in singles or b not in singles]
        n = sum(map(self._char_counts.__getitem__, text))
        if sample:  # how often characters join, for _count_once
            self._sampled[0] += len(text)
            self._sampled[1] += len(joins)
        if joins and len(words) > 1:  # the words' own ends are cuts
            ends = set(accumulate(map(len, words[:-1])))
            joins = [j for j in joins if j not in ends]
        if not joins:
            return n
        chars = self._char_counts
        start = prev = joins[0]
        for j in joins[1:] + [-1]:
            if j != prev + 1:  # the run [start - 1, prev + 1) ends
                run = text[start - 1 : prev + 1]
                n += self._run_count(run) - sum(map(chars.__getitem__, run))
                start = j
            prev = j
        return n

    def _byte_level_total(self, words: list[str]) -> int:
        """`_plain_total` for a byte-level vocabulary (every byte a token of its own), in C but for the first count
        of each run: the words joined by a character no merge touches; every byte one token; corrected, for each
        maximal run of characters that may join and each single character whose bytes may merge
        (`_byte_level_runs`), by its remembered BPE count less its bytes. Not sampled for _count_once: where
        nearly all characters may join (a vocabulary of many CJK merges) a word is one run, BPE'd whole as
        `_whole_words` would."""
        text = self._separator.join(words) if len(words) > 1 else words[0]
        corrections = self._run_corrections
        if len(corrections) > RUN_MEMO_MAX:
            corrections.clear()
        return (len(text.encode("utf-8")) - len(words) + 1  # less the separators
                + sum(map(corrections.__getitem__, self._byte_runs(text))))

    def _run_count(self, run: str) -> int:
        n = self._runs.get(run)
        return self._learn_run(run) if n is None else n

    def _learn_run(self, run: str) -> int:
        n = len(self._model.tokenize(byte_level(run) if self._byte_level else run))
        if len(run) <= 64:
            if len(self._runs) > MEMO_MAX:
                self._runs.clear()
            self._runs[run] = n
        return n


def _byte_level_runs(merges: list) -> tuple[Callable[[str], list[str]] | None, str]:
    """For a byte-level BPE model (every byte a token): a function giving, in a text, the maximal runs of
    neighbouring characters that BPE may join and the single characters whose own bytes may merge (elsewhere
    every byte stays one token), and a separator character that never joins anything.

    BPE joins two characters only by a merge (a, b) whose `a` ends with the left one's last UTF-8 byte and whose
    `b` starts with the right one's first byte (a byte that starts a character): an edge (last, first). Where
    no merge has that edge no token ever spans the cut. One regex finds the maximal chains of pairs that may
    join: a character continues a chain when, for some first byte y, its last byte precedes y in an edge and
    the next character starts with y. One alternative per three-byte lead byte (the CJK scripts), one for all
    ASCII, one for all two-byte and one for all four-byte leads: coarser there, which is still exact, as a run
    holding a cut no merge crosses is still counted whole by BPE; left classes take every character beyond the
    Basic Multilingual Plane (a superset again). Inside one character, BPE's first merge joins two single
    bytes: a character none of whose neighbouring bytes are such a merge stays one token per byte.
    (None, "") without merges or a free ASCII separator."""
    inverse = {ch: byte for byte, ch in _byte_level_map().items()}
    lefts: dict[Any, set[int]] = {}  # group of first bytes -> the last bytes that may precede them
    rights: dict[Any, set[int]] = {}  # group -> its first bytes
    byte_pairs: set[tuple[int, int]] = set()  # merges of two single bytes
    for a, b in merges:
        if len(a) == 1 and len(b) == 1 and a in inverse and b in inverse:
            byte_pairs.add((inverse[a], inverse[b]))
        last, first = (inverse.get(a[-1]) if a else None), (inverse.get(b[0]) if b else None)
        if last is None or first is None or 0x80 <= first < 0xC0:  # b must start a character
            continue
        group = first if 0xE0 <= first < 0xF0 else "ascii" if first < 0x80 else "2" if first < 0xE0 else "4"
        lefts.setdefault(group, set()).add(last)
        rights.setdefault(group, set()).add(first)
    used = set().union(*lefts.values(), *rights.values()) if lefts else set()
    separator = next((chr(c) for c in range(0x80) if c not in used), None)
    if separator is None:
        return None, ""
    order = sorted(lefts, key=lambda g: (not isinstance(g, int), str(g)))  # the CJK lead bytes first
    # The next character continues the chain if it is in some group's right class (a range per lead byte)
    # and this one in that group's left class (a look back). The match starts with a character of the
    # union of the left classes or one whose bytes may merge: the regex engine skips the others in C, and
    # a match is either a chain or that single character.
    union = _last_byte_class(set().union(*lefts.values())) if lefts else ""
    merging = _merging_chars_class(byte_pairs)
    nexts = "|".join(f"[{_first_byte_class(rights[g])}](?<=[{_last_byte_class(lefts[g])}].)" for g in order)
    chain = f"(?={nexts})(?:[{union}](?={nexts}))*.|" if nexts else ""
    return re.compile(f"[{union}{merging}](?:{chain}(?<=[{merging}]))", re.DOTALL).findall, separator


def _merging_chars_class(byte_pairs: set[tuple[int, int]]) -> str:
    """The characters two of whose neighbouring UTF-8 bytes are a merge in `byte_pairs` (a lead byte and the
    next, or the second and third of a three-byte character), and every character beyond the BMP."""
    pairs = []
    for x, y in sorted(byte_pairs):
        if not 0x80 <= y < 0xC0:
            continue  # y starts a character: not inside one
        if 0xC2 <= x < 0xE0:
            pairs.append(((x & 0x1F) << 6 | (y & 0x3F),) * 2)
        elif 0xE0 <= x < 0xF0:
            lo = (x & 0x0F) << 12 | (y & 0x3F) << 6
            if lo >= 0x800 and not 0xD800 <= lo < 0xE000:
                pairs.append((lo, lo + 0x3F))
        elif 0x80 <= x < 0xC0:
            for lead in range(16):
                cp = lead << 12 | (x & 0x3F) << 6 | (y & 0x3F)
                if cp >= 0x800 and not 0xD800 <= cp < 0xE000:
                    pairs.append((cp, cp))
    return _ranges(sorted(pairs)) + "\\U00010000-\\U0010ffff"


def _ranges(pairs: list[tuple[int, int]]) -> str:
    """Regex class body for inclusive code point ranges (sorted), touching ones merged: the class compiles in
    time about linear in its ranges, ~0.1 s for the thousands of a last-byte class."""
    merged: list[list[int]] = []
    for a, b in pairs:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in merged)


def _last_byte_class(lasts: set[int]) -> str:
    """The characters whose last UTF-8 byte is in `lasts`: ASCII ones themselves; in the rest of the BMP, the
    last byte is 0x80 | (code point & 0x3F), so every aligned block of 64 code points holds the same offsets;
    every character beyond the BMP (a superset)."""
    offsets = sorted(x & 0x3F for x in lasts if 0x80 <= x < 0xC0)
    segments: list[tuple[int, int]] = []  # contiguous offsets
    for o in offsets:
        if segments and segments[-1][1] == o - 1:
            segments[-1] = (segments[-1][0], o)
        else:
            segments.append((o, o))
    pairs = [(x, x) for x in sorted(lasts) if x < 0x80]
    pairs += [(base + a, base + b) for base in range(0x80, 0x10000, 0x40) if not 0xD800 <= base < 0xE000
              for a, b in segments]
    return _ranges(pairs) + "\\U00010000-\\U0010ffff"


def _first_byte_class(firsts: set[int]) -> str:
    """The characters whose first UTF-8 byte is in `firsts` (exact: a lead byte fixes a range of code points)."""
    pairs = []
    for y in sorted(firsts):
        if y < 0x80:
            pairs.append((y, y))
        elif 0xC2 <= y < 0xE0:
            pairs.append(((y & 0x1F) << 6, ((y & 0x1F) << 6) + 0x3F))
        elif 0xE0 <= y < 0xF0:
            lo, hi = max((y & 0x0F) << 12, 0x800), ((y & 0x0F) << 12) + 0xFFF
            pairs.append((lo, 0xD7FF if y == 0xED else hi))  # ED's upper half would be the surrogates
        elif 0xF0 <= y <= 0xF4:
            pairs.append((max((y & 0x07) << 18, 0x10000), min(((y & 0x07) << 18) + 0x3FFFF, 0x10FFFF)))
    return _ranges(pairs)


class _LazyTable(dict):
    """A table per character (str.translate's, keyed by code point, or keyed by the character) or per run of
    characters, filled on first use."""

    def __init__(self, make: Callable[[str], Any], key: type = int, keep: Callable[[Any], bool] | None = None):
        super().__init__()
        self._make = make
        self._by_char = key is str  # keyed by the character itself, not its code (for map(table.__getitem__, text))
        self._keep = keep  # which keys to remember (default: all)

    def __missing__(self, key: Any) -> Any:
        out = self._make(key if self._by_char else chr(key))
        if self._keep is None or self._keep(key):
            self[key] = out
        return out


def _isolated_spans(rx: re.Pattern, text: str) -> list[tuple[int, int]]:
    """Split(behavior=isolated) as (start, end) spans: each match is a piece, and so is each stretch between."""
    out, at = [], 0
    for m in rx.finditer(text):
        a, b = m.span()
        if a > at:
            out.append((at, a))
        out.append((a, b))
        at = b
    if at < len(text):
        out.append((at, len(text)))
    return out


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
