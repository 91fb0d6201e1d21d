"""InternLM2's sentencepiece tokenizer (`tokenizer.model` + its json files) as a fast tokenizer.

InternVL2-2B/8B/26B and InternVL2.5-2B/8B/26B ship InternLM2's remote-code `InternLM2Tokenizer`, a slow
tokenizer around `sentencepiece`. It encodes like this, and the fast tokenizer built here does the same:

- Every added token (`added_tokens_decoder` in tokenizer_config.json, `added_tokens.json`) is split out of
  the text first, honouring its lstrip/rstrip/single_word flags; each piece of text between added tokens is
  then encoded by `SentencePieceProcessor.encode` on its own. So the model's normaliser, including the dummy
  "▁" prefix, applies to every such piece, not only to the start of the text.
- InternLM2 renames some of its own pieces: `added_tokens_decoder` gives ids inside the sentencepiece
  vocabulary new text (92542/92543, `[UNUSED_TOKEN_145]`/`[UNUSED_TOKEN_146]` in older InternLM2 code, are
  `<|im_end|>`/`<|im_start|>`). The renamed text is what the tokenizer matches and decodes to.
- BOS (the model's `bos_id`) is prepended when `add_bos_token` (default true); EOS appended only when
  `add_eos_token`. Unknown characters fall back to `<0xNN>` byte pieces (byte_fallback).

Decoding is sentencepiece's: pieces joined, "▁" back to spaces, byte pieces fused into UTF-8, and the
dummy prefix dropped at the start and after every added token. (The slow tokenizer's extra clean-up, which
turns " ." into "." and puts spaces around special tokens, is a lossy quirk and deliberately not copied.)

The `.model` protobuf is read with transformers' bundled schema, so `sentencepiece` is not needed here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_exp.errors import UserError

# sentencepiece ModelProto.SentencePiece.Type
_NORMAL, _USER_DEFINED = 1, 4
_BPE = 2  # TrainerSpec.ModelType
_SPACE = "\u2581"  # sentencepiece's visible space "▁"

# The named tokens transformers' InternVLProcessor reads from the tokenizer (set only when present).
NAMED_IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


class TokenizerConversionError(UserError):
    """A sentencepiece checkpoint this converter cannot reproduce exactly; the message names the file."""


@dataclass(frozen=True)
class AddedTokenSpec:
    id: int
    content: str
    special: bool
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerConversionError(f"{path}: not readable JSON ({e}); restore the file from the checkpoint") from e
    if not isinstance(data, dict):
        raise TokenizerConversionError(f"{path}: expected a JSON object")
    return data


def _token_str(value: Any) -> str | None:
    """A special token as tokenizer_config/special_tokens_map write it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def load_proto(model_file: Path):
    """The parsed sentencepiece ModelProto of `model_file`."""
    from transformers.convert_slow_tokenizer import import_protobuf

    if not model_file.is_file():
        raise TokenizerConversionError(f"{model_file}: no sentencepiece model here (expected tokenizer.model)")
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as e:  # protobuf's DecodeError and friends
        raise TokenizerConversionError(f"{model_file}: not a sentencepiece model ({e})") from e
    if not proto.pieces:
        raise TokenizerConversionError(f"{model_file}: the sentencepiece model has no pieces")
    return proto


def added_tokens(src: Path, config: dict, vocab_size: int) -> list[AddedTokenSpec]:
    """Every added token with its id, from `added_tokens_decoder` and `added_tokens.json` (they must agree)."""
    specials = {_token_str(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    smap = _read_json(src / "special_tokens_map.json")
    specials |= {_token_str(smap.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    for group in (config.get("additional_special_tokens"), smap.get("additional_special_tokens")):
        specials |= {_token_str(t) for t in group or []}
    specials.discard(None)

    by_id: dict[int, AddedTokenSpec] = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        content = _token_str(entry)
        if content is None or not str(key).isdigit():
            raise TokenizerConversionError(f"{src / 'tokenizer_config.json'}: added_tokens_decoder[{key!r}] is malformed")
        e = entry if isinstance(entry, dict) else {}
        by_id[int(key)] = AddedTokenSpec(
            int(key), content, bool(e.get("special", content in specials)),
            bool(e.get("lstrip", False)), bool(e.get("rstrip", False)), bool(e.get("single_word", False)),
        )
    legacy_file = src / "added_tokens.json"
    for content, i in _read_json(legacy_file).items():
        if not isinstance(i, int):
            raise TokenizerConversionError(f"{legacy_file}: the id of {content!r} is not an integer")
        if i in by_id:
            if by_id[i].content != content:
                raise TokenizerConversionError(
                    f"{legacy_file}: id {i} is {content!r} but tokenizer_config.json's added_tokens_decoder says "
                    f"{by_id[i].content!r}; the checkpoint's tokenizer files disagree"
                )
            continue
        by_id[i] = AddedTokenSpec(i, content, content in specials)

    tokens = sorted(by_id.values(), key=lambda t: t.id)
    seen: dict[str, int] = {}
    for t in tokens:
        if t.content in seen:
            raise TokenizerConversionError(f"{src}: added token {t.content!r} has two ids ({seen[t.content]} and {t.id})")
        seen[t.content] = t.id
    beyond = [t.id for t in tokens if t.id >= vocab_size]
    if beyond != list(range(vocab_size, vocab_size + len(beyond))):
        raise TokenizerConversionError(
            f"{src}: added token ids {beyond} do not follow the sentencepiece vocabulary ({vocab_size} pieces) "
            "without gaps; a fast tokenizer cannot place them at these ids"
        )
    return tokens


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """BPE merges that reproduce sentencepiece's encoder.

    Sentencepiece merges any two adjacent symbols whose concatenation is a normal piece, best score first
    (ties: leftmost). Listing every split of every normal piece into two normal pieces, ranked by the
    merged piece's score (then id), gives `tokenizers`' BPE exactly that choice.
    """
    score = {piece: (-s, i) for piece, s, i in pieces}
    ranked = []
    for piece, (neg_score, i) in score.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in score and right in score:
                ranked.append((neg_score, i, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _check_pieces_reachable(model: Any, normal: list[tuple[str, float, int]], where: Path) -> None:
    """Every normal piece, BPE-merged from its own characters, must end as that one piece."""
    from tokenizers import Tokenizer

    probe = Tokenizer(model)
    pieces = [piece for piece, _, _ in normal]
    bad = [p for p, enc in zip(pieces, probe.encode_batch(pieces, add_special_tokens=False)) if len(enc.ids) != 1]
    if bad:
        raise TokenizerConversionError(
            f"{where}: {len(bad)} pieces (e.g. {bad[0]!r}) are not reachable by merging their characters; with "
            "user-defined pieces in the model the fast tokenizer could then differ from sentencepiece"
        )


def build_backend(proto: Any, vocab: list[str], added: list[AddedTokenSpec], *, add_bos: bool, add_eos: bool,
                  where: Path):
    """The `tokenizers.Tokenizer` equivalent of encoding with sentencepiece, piece by piece between added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if norm.escape_whitespaces is False or spec.treat_whitespace_as_suffix:
        raise TokenizerConversionError(
            f"{where}: this sentencepiece model uses escape_whitespaces=false or treat_whitespace_as_suffix, "
            "which the converter does not reproduce"
        )
    if spec.model_type != _BPE:
        # Unigram (and char/word) models: `tokenizers`' Viterbi breaks ties unlike sentencepiece's, so the
        # ids would differ on some texts. InternLM2 is BPE; refuse rather than convert almost right.
        raise TokenizerConversionError(
            f"{where}: sentencepiece model_type {spec.model_type} is not BPE; only BPE models (InternLM2's) "
            "convert with identical ids"
        )
    renamed = {t.id for t in added}  # e.g. InternLM2's [UNUSED_TOKEN_N]: only ever matched as added tokens
    normal = [(vocab[i], p.score, i) for i, p in enumerate(proto.pieces) if p.type == _NORMAL and i not in renamed]
    user_defined = [vocab[i] for i, p in enumerate(proto.pieces) if p.type == _USER_DEFINED and i not in renamed]
    bpe = dict(
        vocab={piece: i for i, piece in enumerate(vocab)},
        merges=_bpe_merges(normal),
        unk_token=vocab[spec.unk_id],
        fuse_unk=True,  # sentencepiece merges a run of unknown pieces into one <unk>
        byte_fallback=spec.byte_fallback,
    )
    if user_defined:
        _check_pieces_reachable(models.BPE(**bpe), normal, where)
    # With user-defined pieces, the pre-tokenizer below isolates them and the model emits them whole
    # (ignore_merges: a word that is a piece maps to it directly; _check_pieces_reachable shows the merges
    # would have reached the same piece for every normal one).
    model = models.BPE(**bpe, ignore_merges=bool(user_defined))
    tok = Tokenizer(model)

    # Normaliser, in sentencepiece's order; `tokenizers` runs it on each piece of text between added tokens.
    steps = []
    if norm.precompiled_charsmap:
        charsmap = normalizers.Precompiled(norm.precompiled_charsmap)
        # `tokenizers` maps a whole grapheme cluster at once, sentencepiece each character: "\r\n" is one
        # cluster, so map its two characters separately first (nmt_nfkc: two spaces, not one).
        crlf = charsmap.normalize_str("\r") + charsmap.normalize_str("\n")
        if charsmap.normalize_str("\r\n") != crlf:
            steps.append(normalizers.Replace("\r\n", crlf))
        steps.append(charsmap)
    if norm.remove_extra_whitespaces:  # only U+0020 counts; newlines and tabs stay
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", _SPACE))
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(_SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    if user_defined:
        # Sentencepiece matches them in the normalised text, after the dummy prefix, and they do not start a
        # new piece of text (so no new prefix after them): split them off after normalisation.
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")

    # Added tokens keep their ids: those inside the vocabulary renamed it above, the rest follow it in order.
    tok.add_tokens([
        AddedToken(t.content, special=t.special, lstrip=t.lstrip, rstrip=t.rstrip, single_word=t.single_word,
                   normalized=False)
        for t in added
    ])
    for t in added:
        got = tok.token_to_id(t.content)
        if got != t.id:  # a bug here would shift every image token: check, don't trust
            raise TokenizerConversionError(f"{where}: added token {t.content!r} landed at id {got}, expected {t.id}")

    # Decoder: the inverse of the normaliser (one dummy space at the start and after each added token).
    dec = [decoders.Replace(_SPACE, " ")]
    if spec.byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        dec += [decoders.Replace(t.content + " ", t.content) for t in sorted(added, key=lambda t: -len(t.content))]
        dec.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(dec)

    bos, eos = spec.bos_id, spec.eos_id
    for flag, name, i in ((add_bos, "add_bos_token", bos), (add_eos, "add_eos_token", eos)):
        if flag and not 0 <= i < len(vocab):
            raise TokenizerConversionError(f"{where}: {name} is true but the sentencepiece model has no such token")
    single = " ".join(([f"{vocab[bos]}:0"] if add_bos else []) + ["$A:0"] + ([f"{vocab[eos]}:0"] if add_eos else []))
    pair = single + " " + " ".join(([f"{vocab[bos]}:1"] if add_bos else []) + ["$B:1"] + ([f"{vocab[eos]}:1"] if add_eos else []))
    special = ([(vocab[bos], bos)] if add_bos else []) + ([(vocab[eos], eos)] if add_eos and eos != bos else [])
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    return tok


def sentencepiece_to_fast(src: Path, *, add_video_token: bool = True):
    """A `PreTrainedTokenizerFast` for the sentencepiece checkpoint in `src` (tokenizer.model + json files).

    Every added token keeps its original id; bos/eos/pad/unk are those tokenizer_config.json (or
    special_tokens_map.json) names; `add_bos_token`/`add_eos_token` as configured (defaults true/false,
    InternLM2Tokenizer's). The ids equal the original slow tokenizer's for any text (but a literal
    `<video>` when the video token below is added).

    transformers' InternVLProcessor needs a named `video_token`; InternLM2 checkpoints have none (InternVL
    writes video frames as images). With `add_video_token`, `<video>` is appended as one special token
    after the last original id. It never reaches the model: the processor replaces it by frame spans, and
    our training path expands `<video>` before tokenising.
    """
    from transformers import PreTrainedTokenizerFast

    src = Path(src)
    proto = load_proto(src / "tokenizer.model")
    config = _read_json(src / "tokenizer_config.json")
    smap = _read_json(src / "special_tokens_map.json")
    vocab = [p.piece for p in proto.pieces]
    added = added_tokens(src, config, len(vocab))
    if add_video_token and NAMED_IMAGE_TOKENS["video_token"] not in {t.content for t in added} | set(vocab):
        next_id = max([len(vocab) - 1] + [t.id for t in added]) + 1
        added.append(AddedTokenSpec(next_id, NAMED_IMAGE_TOKENS["video_token"], special=True))
    for t in added:  # InternLM2 renames its own [UNUSED_TOKEN_N] pieces (e.g. 92543 -> <|im_start|>)
        if t.id < len(vocab):
            vocab[t.id] = t.content
    if len(set(vocab)) != len(vocab):
        dup = next(p for p in vocab if vocab.count(p) > 1)
        raise TokenizerConversionError(f"{src}: the piece {dup!r} occurs twice once added tokens are applied")

    add_bos = bool(config.get("add_bos_token", True))
    add_eos = bool(config.get("add_eos_token", False))
    named = {}
    defaults = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
    for key, default in defaults.items():
        value = _token_str(config.get(key)) or _token_str(smap.get(key))
        named[key] = value if key in config or key in smap else default
    spec = proto.trainer_spec
    # The slow tokenizer takes BOS/EOS ids from the sentencepiece model, not from these names: they must agree.
    for key, i in (("bos_token", spec.bos_id), ("eos_token", spec.eos_id), ("unk_token", spec.unk_id)):
        if named[key] is not None and 0 <= i < len(vocab) and vocab[i] != named[key]:
            raise TokenizerConversionError(
                f"{src / 'tokenizer_config.json'}: {key} is {named[key]!r} but the sentencepiece model's "
                f"{key.split('_')[0]} piece is {vocab[i]!r}; the original tokenizer would use the latter"
            )
    for key, value in named.items():
        if value is not None and value not in vocab and value not in {t.content for t in added}:
            raise TokenizerConversionError(f"{src}: {key} {value!r} is not in the vocabulary")

    backend = build_backend(proto, vocab, added, add_bos=add_bos, add_eos=add_eos, where=src)
    present = {t.content for t in added} | set(vocab)
    extra = {name: tok for name, tok in NAMED_IMAGE_TOKENS.items() if tok in present}
    kwargs: dict[str, Any] = {}
    if isinstance(config.get("model_max_length"), int):
        kwargs["model_max_length"] = config["model_max_length"]
    if config.get("padding_side") in ("left", "right"):
        kwargs["padding_side"] = config["padding_side"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **named,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        clean_up_tokenization_spaces=False,
        extra_special_tokens=extra or None,
        **kwargs,
    )
