"""Running the conversion's key tables backwards, for export to the original layout (models/convert/export.py).

The forward tables are (regex, replacement) pairs: a regex over original key names with capture groups
(`(\\d+)`, `(q_norm|k_norm)`), and a replacement made of literal text and group references. Each pair is
turned around mechanically (the replacement becomes the regex, the regex the replacement), so there is one
table per family, read in both directions. The export checks the result: the forward rules, applied to the
names it derives, must give back exactly the native names it started from.
"""

from __future__ import annotations

import re
from functools import lru_cache

_REGEX_LITERAL_ESCAPES = set(".\\()[]{}*+?|^$-_/")


def _pattern_parts(pattern: str) -> tuple[list[str | tuple[str]], bool]:
    """'^a\\.(\\d+)\\.b$' -> (['a.', ('\\d+',), '.b'], anchored_at_end). Only the forms the tables use."""
    if not pattern.startswith("^"):
        raise ValueError(f"key pattern {pattern!r} must be anchored with ^")
    end = pattern.endswith("$") and not pattern.endswith("\\$")
    body = pattern[1:-1] if end else pattern[1:]
    parts: list[str | tuple[str]] = []
    lit, i = "", 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1]
            if nxt not in _REGEX_LITERAL_ESCAPES:
                raise ValueError(f"key pattern {pattern!r}: \\{nxt} outside a group cannot be inverted")
            lit += nxt
            i += 2
        elif c == "(":
            close = body.index(")", i)
            if lit:
                parts.append(lit)
                lit = ""
            parts.append((body[i + 1:close],))
            i = close + 1
        elif c in ".*+?[]{}|$":
            raise ValueError(f"key pattern {pattern!r}: {c!r} outside a group cannot be inverted")
        else:
            lit += c
            i += 1
    if lit:
        parts.append(lit)
    return parts, end


def _replacement_parts(repl: str) -> list[str | int]:
    """'x.\\1.y' -> ['x.', 1, '.y']."""
    parts: list[str | int] = []
    for piece in re.split(r"(\\\d+)", repl):
        if re.fullmatch(r"\\\d+", piece):
            parts.append(int(piece[1:]))
        elif piece:
            parts.append(piece)
    return parts


@lru_cache(maxsize=None)
def invert_rename(pattern: str, repl: str) -> tuple[str, str]:
    """The (regex, replacement) pair that maps what `re.sub(pattern, repl, key)` produced back to `key`."""
    parts, end = _pattern_parts(pattern)
    groups = [p[0] for p in parts if isinstance(p, tuple)]
    rparts = _replacement_parts(repl)
    refs = [p for p in rparts if isinstance(p, int)]
    if sorted(refs) != list(range(1, len(groups) + 1)):
        raise ValueError(f"{pattern!r} -> {repl!r}: every group must appear exactly once in the replacement")
    new_pattern = "^" + "".join(re.escape(p) if isinstance(p, str) else f"({groups[p - 1]})" for p in rparts)
    position = {g: k for k, g in enumerate(refs, start=1)}  # group of the forward regex -> group of the inverse
    new_repl, g = "", 0
    for p in parts:
        if isinstance(p, tuple):
            g += 1
            new_repl += f"\\{position[g]}"
        else:
            new_repl += p.replace("\\", "\\\\")
    return new_pattern + ("$" if end else ""), new_repl


def apply_inverted(key: str, table: list[tuple[str, str]]) -> str | None:
    """The first pair of `table`, turned around, that matches `key`, applied; None when none matches."""
    for pattern, repl in table:
        back, back_repl = invert_rename(pattern, repl)
        new, n = re.subn(back, back_repl, key)
        if n:
            return new
    return None
