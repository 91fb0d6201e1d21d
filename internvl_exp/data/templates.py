"""InternVL's conversation templates and per-turn label masking.

The prompt text matches InternVL's own ``conversation.py`` exactly (see docs/data.md). Each turn is
tokenised on its own (an assistant header together with its answer, as InternVL does, so a sentencepiece
tokenizer's dummy prefix never lands before an answer) and the pieces are concatenated, so the labels can
never drift from the tokens
(InternVL's "tokenization mismatch ... (ignored)", which silently masks a whole sample, cannot happen).
Only assistant content plus the end-of-turn token carries loss.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from internvl_exp.data.token_count import WordCounter

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"

_SYSTEM_INTERNVL2_5 = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)
_SYSTEM_INTERNLM2 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"


@dataclass(frozen=True)
class Template:
    name: str
    system_template: str  # formatted with system_message
    system_message: str
    user_prefix: str
    assistant_prefix: str
    end_of_turn: str  # supervised at the end of an assistant turn
    turn_suffix: str = ""  # follows end_of_turn on every turn, never supervised
    strip_values: bool = False

    def render(self, conversations: Sequence[dict], system_message: str | None = None) -> str:
        """The full prompt text, before `<image>` expansion (for display and golden tests)."""
        return "".join(text for turn in self.turn_segments(conversations, system_message) for text, _ in turn)

    def turn_segments(self, conversations: Sequence[dict], system_message: str | None = None) -> list[list[tuple[str, bool]]]:
        """Per turn, a list of (text, supervised) pieces; the system prompt is turn 0."""
        system_message, turns = split_system(normalise_roles(conversations), system_message, self.system_message)
        eot = self.end_of_turn + self.turn_suffix
        out = [[(self.system_template.format(system_message=system_message) + eot, False)]]
        for role, value in turns:
            if self.strip_values:
                value = value.strip()
            if role == "human":
                out.append([(self.user_prefix + value + eot, False)])
            else:
                pieces = [(self.assistant_prefix, False), (value + self.end_of_turn, True)]
                if self.turn_suffix:
                    pieces.append((self.turn_suffix, False))
                out.append(pieces)
        return out


TEMPLATES: dict[str, Template] = {
    "internvl2_5": Template(
        name="internvl2_5",
        system_template="<|im_start|>system\n{system_message}",
        system_message=_SYSTEM_INTERNVL2_5,
        user_prefix="<|im_start|>user\n",
        assistant_prefix="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        turn_suffix="\n",
    ),
    "internlm2-chat": Template(
        name="internlm2-chat",
        system_template="<|im_start|>system\n{system_message}",
        system_message=_SYSTEM_INTERNLM2,
        user_prefix="<|im_start|>user\n",
        assistant_prefix="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
        strip_values=True,
    ),
    "Hermes-2": Template(
        name="Hermes-2",
        system_template="<|im_start|>system\n{system_message}",
        system_message=_SYSTEM_INTERNLM2,
        user_prefix="<|im_start|>user\n",
        assistant_prefix="<|im_start|>assistant\n",
        end_of_turn="<|im_end|>",
    ),
    "phi3-chat": Template(
        name="phi3-chat",
        system_template="<|system|>\n{system_message}",
        system_message=_SYSTEM_INTERNLM2,
        user_prefix="<|user|>\n",
        assistant_prefix="<|assistant|>\n",
        end_of_turn="<|end|>",
    ),
}

_ROLE_ALIASES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}


class ConversationError(ValueError):
    """A conversation that cannot be turned into a training sample (the message says why)."""


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConversationError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}") from None


def split_system(turns: list[tuple[str, str]], system_message: str | None,
                 default: str) -> tuple[str, list[tuple[str, str]]]:
    """(the system prompt, the other turns): a leading system turn wins over `system_message`, which wins over
    the template's default."""
    if turns and turns[0][0] == "system":
        return turns[0][1], turns[1:]
    return (default if system_message is None else system_message), turns


def normalise_roles(conversations: Sequence[dict]) -> list[tuple[str, str]]:
    """[(role, value)] with roles human/gpt/system; checks alternation (an optional system turn first)."""
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise ConversationError("'conversations' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"turn {i} must be an object with 'from' and 'value'")
        role = _ROLE_ALIASES.get(str(turn["from"]).lower())
        if role is None:
            raise ConversationError(f"turn {i} has unknown role {turn['from']!r} (expected human/gpt/system)")
        if not isinstance(turn["value"], str):
            raise ConversationError(f"turn {i} 'value' must be a string")
        turns.append((role, turn["value"]))
    body = turns[1:] if turns[0][0] == "system" else turns
    if not body:
        raise ConversationError("no human/gpt turns after the system turn")
    for i, (role, _) in enumerate(body):
        expected = "human" if i % 2 == 0 else "gpt"
        if role != expected:
            raise ConversationError(f"roles must alternate human/gpt; turn {i + len(turns) - len(body)} is {role!r}, expected {expected!r}")
    if body[-1][0] != "gpt":
        raise ConversationError("the last turn must be an assistant ('gpt') answer")
    return turns


class _TokenIds:
    """Ids of the image tokens, whether the tokenizer prepends a BOS, and a fast text encoder."""

    _PROBE = "Hello <|im_start|>user\nWhat is 1+1?<|im_end|>\n"

    def __init__(self, tokenizer: Any):
        ids = tokenizer.convert_tokens_to_ids([IMG_START, IMG_END, IMG_CONTEXT])
        unk = getattr(tokenizer, "unk_token_id", None)
        for tok, i in zip((IMG_START, IMG_END, IMG_CONTEXT), ids):
            if i is None or (unk is not None and i == unk):
                raise ConversationError(f"tokenizer has no {tok} token; add InternVL's special tokens first")
        self.img_start, self.img_end, self.img_context = ids
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        bos = getattr(tokenizer, "bos_token_id", None)
        self.bos = bos if (bos is not None and probe and probe[0] == bos) else None
        # The Rust tokenizer encodes a whole batch of pieces in one call, several times faster than one
        # `tokenizer(...)` per piece; used only when it gives exactly the same ids on a probe.
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        if backend is not None:
            slow = tokenizer(self._PROBE, add_special_tokens=False)["input_ids"]
            if backend.encode(self._PROBE, add_special_tokens=False).ids != slow:
                backend = None
        self._backend = backend
        self._counter: WordCounter | None = None  # built on first count (it reads the tokenizer's JSON)
        self._memo: dict[str, int] = {}

    def encode(self, tokenizer: Any, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (BOS/EOS) added. (The tokenizer is passed in, not
        kept: this object is the value of a cache keyed weakly by the tokenizer.)"""
        if not texts:
            return []
        b = self._backend
        # A previous `tokenizer(..., truncation=True)` call leaves truncation switched on in the backend.
        if b is not None and b.truncation is None and b.padding is None:
            return [e.ids for e in b.encode_batch(texts, add_special_tokens=False)]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def text_counter(self, tokenizer: Any) -> Callable[[str], int]:
        """A function giving each text's token count (as `encode`), without building the ids: per-word
        memoised counts for a byte-level BPE tokenizer on ASCII text (token_count.py, exact), else the
        tokenizer, with short texts (the system prompt, role headers) memoised whole. Not to be kept: it
        may hold the tokenizer."""
        b = self._backend
        if b is not None and b.truncation is None and b.padding is None:
            if self._counter is None:
                self._counter = WordCounter(b)
            return self._counter.count
        return functools.partial(self._slow_count, tokenizer)

    def refresh(self) -> None:
        """Forget the word counts when tokens were added to the tokenizer since they were made. (Not checked
        on every count: the vocabulary size costs O(vocabulary) to ask for.)"""
        b = self._backend
        if self._counter is not None and self._counter.vocab_size != b.get_vocab_size(with_added_tokens=True):
            self._counter = None
        self._memo.clear()

    def _slow_count(self, tokenizer: Any, text: str) -> int:
        n = self._memo.get(text)
        if n is None:
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(text) <= 512:
                if len(self._memo) > 20_000:
                    self._memo.clear()
                self._memo[text] = n
        return n


# Keyed weakly by the tokenizer object (an id() key could be reused by a different tokenizer).
_IDS_CACHE: "weakref.WeakKeyDictionary[Any, _TokenIds]" = weakref.WeakKeyDictionary()


def _token_ids(tokenizer: Any) -> _TokenIds:
    try:
        return _IDS_CACHE[tokenizer]
    except KeyError:
        ids = _IDS_CACHE[tokenizer] = _TokenIds(tokenizer)
        return ids
    except TypeError:  # not weak-referenceable: no caching
        return _TokenIds(tokenizer)


def refresh_token_counts(tokenizer: Any) -> None:
    """Call after adding tokens to a tokenizer already used by `count_turns` (the scan does, per chunk)."""
    _token_ids(tokenizer).refresh()


def _join_headers(turn: list[tuple[str, bool]]) -> list[tuple[str, str, bool]]:
    """[(text, supervised)] -> [(text, header, supervised)]: a masked piece right before a supervised one
    becomes that unit's `header` (its leading, masked text); other pieces have header ""."""
    out: list[tuple[str, str, bool]] = []
    i = 0
    while i < len(turn):
        text, supervised = turn[i]
        if not supervised and i + 1 < len(turn) and turn[i + 1][1] and IMAGE_PLACEHOLDER not in text:
            out.append((text + turn[i + 1][0], text, True))
            i += 2
        else:
            out.append((text, "", supervised))
            i += 1
    return out


def _split_turns(conversations: Sequence[dict], tokenizer: Any, template: str | Template,
                 num_image_tokens: Sequence[int], system_message: str | None):
    """The token ids helper; each turn's units as (text parts between `<image>`s, header, supervised); every
    non-empty text part in order and every header (what gets encoded).

    A masked header followed by the answer (`<|im_start|>assistant\n` + answer) is one text to the
    tokenizer, as in InternVL, which tokenises whole turns: encoded apart, a sentencepiece tokenizer
    (InternLM2) would put its dummy-prefix "▁" before every answer, which inference never sees. The
    header's own token count says where the loss starts (InternVL's preprocess counts it the same way)."""
    tpl = get_template(template) if isinstance(template, str) else template
    ids = _token_ids(tokenizer)
    segments = tpl.turn_segments(conversations, system_message)
    n_placeholders = sum(text.count(IMAGE_PLACEHOLDER) for turn in segments for text, _ in turn)
    if n_placeholders != len(num_image_tokens):
        raise ConversationError(
            f"{n_placeholders} <image> placeholder(s) in the conversation but {len(num_image_tokens)} image(s)"
        )
    units = [_join_headers(turn) for turn in segments]
    split = [[(text.split(IMAGE_PLACEHOLDER), header, supervised) for text, header, supervised in turn] for turn in units]
    pieces = [part for turn in split for parts, _, _ in turn for part in parts if part]
    headers = [header for turn in split for _, header, _ in turn if header]
    return ids, split, pieces, headers


def tokenize_turns(
    conversations: Sequence[dict],
    tokenizer: Any,
    template: str | Template,
    num_image_tokens: Sequence[int] = (),
    system_message: str | None = None,
) -> list[dict[str, Any]]:
    """Like `tokenize_conversation`, but one {"input_ids","labels","num_images"} block per turn.

    Turn 0 is the system prompt (plus the BOS where the tokenizer adds one). Used by the length policy
    to cut whole trailing turns. Each `<image>` becomes one whole `<img>...</img>` span inside its turn,
    so cutting at a turn boundary can never split an image.
    """
    ids, split, pieces, headers = _split_turns(conversations, tokenizer, template, num_image_tokens, system_message)
    encoded_all = ids.encode(tokenizer, pieces + headers)  # every text piece of the conversation, in one batch
    encoded = iter(encoded_all[: len(pieces)])
    header_len = iter(len(h) for h in encoded_all[len(pieces) :])
    image_iter = iter(num_image_tokens)
    blocks = []
    for t, turn in enumerate(split):
        input_ids: list[int] = []
        labels: list[int] = []
        n_images = 0
        if t == 0 and ids.bos is not None:
            input_ids.append(ids.bos)
            labels.append(IGNORE_INDEX)
        for parts, header, supervised in turn:
            masked = next(header_len) if header else 0  # tokens of the header at the start of this unit
            for k, part in enumerate(parts):
                if k > 0:
                    n = next(image_iter)
                    span = [ids.img_start] + [ids.img_context] * n + [ids.img_end]
                    input_ids += span
                    labels += [IGNORE_INDEX] * len(span)
                    n_images += 1
                if part:
                    piece = next(encoded)
                    cut = min(masked, len(piece)) if k == 0 else 0
                    input_ids += piece
                    labels += [IGNORE_INDEX] * cut + (piece[cut:] if supervised else [IGNORE_INDEX] * (len(piece) - cut))
        blocks.append({"input_ids": input_ids, "labels": labels, "num_images": n_images})
    return blocks


def count_turns(
    conversations: Sequence[dict],
    tokenizer: Any,
    template: str | Template,
    num_image_tokens: Sequence[int] = (),
    system_message: str | None = None,
    roles_checked: bool = False,
) -> list[dict[str, int]]:
    """What `tokenize_turns` would give, counted: one {"length", "supervised", "num_images"} per turn.

    The pre-flight scan needs only the counts; building the id lists (thousands of image tokens per
    sample) would cost more than the tokeniser itself. The same pieces as `tokenize_turns` are counted
    (each turn's text cut at its `<image>`s; an assistant header together with its answer, the header's
    own count masked), walked directly from the template: this runs on every line of every dataset.
    `roles_checked`: the roles are canonical
    (system/human/gpt) and were checked by `normalise_roles` already. tests/test_prescan_fast_count.py holds it to
    `tokenize_turns`."""
    tpl = get_template(template) if isinstance(template, str) else template
    ids = _token_ids(tokenizer)
    count = ids.text_counter(tokenizer)
    turns = [(t["from"], t["value"]) for t in conversations] if roles_checked else normalise_roles(conversations)
    system_message, turns = split_system(turns, system_message, tpl.system_message)
    eot = tpl.end_of_turn + tpl.turn_suffix
    images = list(num_image_tokens)
    used = 0  # images placed so far

    def add(text: str, masked: int, sup: bool, block: list[int]) -> None:
        """Count `text` (cut at its `<image>`s) into block = [length, supervised, num_images]."""
        nonlocal used
        if IMAGE_PLACEHOLDER not in text:  # most texts: one piece
            n = count(text)
            block[0] += n
            if sup:
                block[1] += n - min(masked, n)
            return
        parts = text.split(IMAGE_PLACEHOLDER)
        for k, part in enumerate(parts):
            if k > 0:
                if used < len(images):
                    block[0] += images[used] + 2
                used += 1
                block[2] += 1
            if part:
                n = count(part)
                block[0] += n
                if sup:
                    block[1] += n - (min(masked, n) if k == 0 else 0)

    blocks = [[int(ids.bos is not None), 0, 0]]
    add(tpl.system_template.format(system_message=system_message) + eot, 0, False, blocks[0])
    header = tpl.assistant_prefix
    joined = IMAGE_PLACEHOLDER not in header  # as _join_headers: the header is counted with its answer
    header_len = count(header) if (joined and header) else 0
    suffix = tpl.turn_suffix
    suffix_len = count(suffix) if suffix and IMAGE_PLACEHOLDER not in suffix else None
    for role, value in turns:
        if tpl.strip_values:
            value = value.strip()
        block = [0, 0, 0]
        if role == "human":
            add(tpl.user_prefix + value + eot, 0, False, block)
        else:
            if joined:
                add(header + value + tpl.end_of_turn, header_len, True, block)
            else:
                add(header, 0, False, block)
                add(value + tpl.end_of_turn, 0, True, block)
            if suffix_len is not None:
                block[0] += suffix_len
            elif suffix:
                add(suffix, 0, False, block)
        blocks.append(block)
    if used != len(images):
        raise ConversationError(f"{used} <image> placeholder(s) in the conversation but {len(images)} image(s)")
    return [{"length": b[0], "supervised": b[1], "num_images": b[2]} for b in blocks]


def tokenize_conversation(
    conversations: Sequence[dict],
    tokenizer: Any,
    template: str | Template,
    num_image_tokens: Sequence[int] = (),
    system_message: str | None = None,
) -> dict[str, list[int]]:
    """Tokenise one conversation with `template`.

    `num_image_tokens` has one count per `<image>` placeholder (in order): each placeholder becomes
    `<img>` + `<IMG_CONTEXT>` * count + `</img>`. Returns {"input_ids", "labels"} (lists of ints) where
    labels are -100 everywhere except assistant content and its end-of-turn token.
    """
    blocks = tokenize_turns(conversations, tokenizer, template, num_image_tokens, system_message)
    return {
        "input_ids": [i for b in blocks for i in b["input_ids"]],
        "labels": [i for b in blocks for i in b["labels"]],
    }
