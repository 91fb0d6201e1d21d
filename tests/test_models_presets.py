"""The model zoo presets (conf/model/): each composes with the published facts transcribed in
tests/fixtures/model_zoo.csv, the headline `--cfg job` stays light, and every preset whose dims are sourced
builds on the meta device at the size its model card states; the others refuse random init, naming the missing
keys."""

from __future__ import annotations

import csv
import functools
import math
import subprocess
import sys

import pytest

from conftest import CONF, ROOT, compose, fixture

PRESETS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem not in ("tiny", "local"))


def _load_zoo() -> dict[str, dict]:
    """tests/fixtures/model_zoo.csv, one row per preset (its header names the public sources)."""
    with fixture("model_zoo.csv").open(newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    num = lambda v, kind: kind(v) if v else None  # noqa: E731  (an empty cell: no source gives the value)
    return {r["preset"]: {"original": r["original"], "native": r["native"] or None, "template": r["template"],
                          "image_token_id": num(r["image_token_id"], int),
                          "card": tuple(num(r[k], float) for k in ("card_vision_b", "card_llm_b", "card_total_b"))}
            for r in rows}


# Independent transcription of the zoo (Hub ids, template, IMG_CONTEXT id, published parameter counts), to catch
# a slip in a preset file.
ZOO = _load_zoo()
INTERNVIT_300M = 304e6  # "Params (M): 304", huggingface.co/OpenGVLab/InternViT-300M-448px (model card)
# Presets whose every arch dim is sourced (docs/models.md; all others have a null arch value somewhere).
SOURCED = {"internvl2_8b", "internvl2_26b", "internvl2_5_4b", "internvl3_1b", "internvl3_5_1b", "internvl3_5_8b",
           "internvl3_5_30b_a3b", "internvl3_5_gpt_oss_20b_a4b"}
# Published (vision, LLM, total) billions of the presets that build without weights, to compare a meta build with.
CARDS = {name: ZOO[name]["card"] for name in SOURCED if any(ZOO[name]["card"])}


@functools.lru_cache(maxsize=None)
def _model(*overrides: str):
    """The composed model config (cached: composing costs ~1 s, and these tests only read it)."""
    return compose(list(overrides)).model


def test_the_zoo_is_complete():
    assert set(PRESETS) == set(ZOO)
    # The sourced presets with a published count (a fixture edit that dropped one would silently skip its check).
    assert set(CARDS) == {"internvl2_8b", "internvl3_5_1b", "internvl3_5_8b", "internvl3_5_30b_a3b",
                          "internvl3_5_gpt_oss_20b_a4b"}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_with_the_zoo_facts(name, tmp_path):
    from internvl_exp.config.geometry import tokens_per_tile
    from internvl_exp.models.resolve import hub_ids

    m = _model(f"model={name}")
    zoo = ZOO[name]
    original, native, template, token = zoo["original"], zoo["native"], zoo["template"], zoo["image_token_id"]
    assert (m.name, m.family, m.hub.original, m.hub.native) == (name, "internvl_hf", original, native)
    assert hub_ids(m) == [i for i in (native, original) if i]  # native first: no conversion needed
    assert (m.template, m.image_token_id, m.image_context_token) == (template, token, "<IMG_CONTEXT>")
    assert (m.image_size, m.patch_size, m.downsample_ratio) == (448, 14, 0.5)
    # 448² tile, patch 14, pixel shuffle 0.5 (transformers' image_seq_length)
    assert tokens_per_tile(m.image_size, m.patch_size, m.downsample_ratio) == 256
    assert m.random_init is False and m.path is None
    assert m.max_dynamic_patch == (6 if name.startswith("internvl2") else 12)  # the 2nd_finetune scripts (S2-S5)


def test_mpo_variants_pick_their_own_repos(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate
    from internvl_exp.config.geometry import tokens_per_tile
    from internvl_exp.models.resolve import hub_ids

    cfg = compose(["model=internvl2_8b", "model.variant=mpo"], tmp_path)
    validate(cfg)
    assert hub_ids(cfg.model) == ["OpenGVLab/InternVL2-8B-MPO"]
    cfg = compose(["model=internvl2_5_2b", "model.variant=mpo"], tmp_path)
    assert hub_ids(cfg.model) == ["OpenGVLab/InternVL2_5-2B-MPO-hf", "OpenGVLab/InternVL2_5-2B-MPO"]
    for n in ("1b", "2b", "4b", "8b", "26b", "38b", "78b"):
        assert _model(f"model=internvl2_5_{n}").variants.mpo.original == f"OpenGVLab/InternVL2_5-{n.upper()}-MPO"
    with pytest.raises(ConfigError, match=r"model.variant: 'mpo' is not available for model=internvl3_1b"):
        validate(compose(["model=internvl3_1b", "model.variant=mpo"], tmp_path))


_PROBE = """
import runpy, sys
sys.argv = ["launch.py", *sys.argv[1:]]
try:
    runpy.run_path({launch!r}, run_name="__main__")
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in ("torch", "transformers") if m in sys.modules), file=sys.stderr)
"""


def test_headline_cfg_job_is_sensible_and_light():
    from omegaconf import OmegaConf

    res = subprocess.run(
        [sys.executable, "-c", _PROBE.format(launch=str(ROOT / "launch.py")),
         "model=internvl2_8b", "data=mix", "freeze=vision", "--cfg", "job"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr.rstrip().endswith("HEAVY="), res.stderr
    cfg = OmegaConf.create(res.stdout)
    assert cfg.model.image_size == 448 and cfg.model.template == "internlm2-chat"
    assert cfg.model.image_token_id == 92546 and cfg.model.hub.original == "OpenGVLab/InternVL2-8B"
    assert cfg.freeze.parts.vision == "frozen" and cfg.data.name == "mix"


def _billions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


def _within(actual: float, card: float) -> bool:
    """2% of the card figure, or half its last printed digit when that is wider: the cards print counts to
    0.1B, so "1.1B" means anything in [1.05, 1.15) (4.5% either side); for 8.1B the 2% bound is the wider one."""
    return abs(actual - card) <= max(0.02 * card, 0.05)


def test_sourced_presets_are_exactly_those_random_init_accepts(tmp_path):
    from internvl_exp.config.arch_rules import random_init_refusal

    accepted = {n for n in PRESETS if random_init_refusal(_model(f"model={n}")) is None}
    assert accepted == SOURCED


def _meta(name, tmp_path):
    from internvl_exp.models.loading import build_model_on_meta

    m = _model(f"model={name}", "model.random_init=true")
    return m, build_model_on_meta(m)


@pytest.mark.parametrize("name", sorted(SOURCED))
def test_meta_build_has_the_preset_dims(name, tmp_path):
    m, model = _meta(name, tmp_path)
    assert all(p.device.type == "meta" for p in model.parameters())
    inner = model.model
    assert inner.vision_tower.config.hidden_size == m.arch.vision.hidden_size
    assert len(inner.vision_tower.encoder.layer) == m.arch.vision.num_hidden_layers
    assert inner.language_model.config.hidden_size == m.arch.text.hidden_size
    assert len(inner.language_model.layers) == m.arch.text.num_hidden_layers
    assert model.lm_head.weight.shape[0] == m.arch.text.vocab_size
    tied = model.lm_head.weight is inner.language_model.embed_tokens.weight
    assert tied == m.arch.text.tie_word_embeddings
    if m.arch.vision.hidden_size == 1024:  # InternViT-300M: its own card
        assert abs(_billions(inner.vision_tower) * 1e9 - INTERNVIT_300M) <= 0.02 * INTERNVIT_300M


@pytest.mark.parametrize("name", sorted(CARDS))
def test_meta_build_matches_the_model_card(name, tmp_path):
    """Sourced presets without a published count (internvl2_26b, internvl2_5_4b, internvl3_1b: no card figure in
    tests/fixtures/model_zoo.csv) are covered by the dims test above only."""
    m, model = _meta(name, tmp_path)
    inner = model.model
    vision = _billions(inner.vision_tower)
    llm = _billions(inner.language_model) + (0 if m.arch.text.tie_word_embeddings else model.lm_head.weight.numel() / 1e9)
    for part, actual, figure in zip(("vision", "llm", "total"), (vision, llm, _billions(model)), CARDS[name]):
        if figure is not None:
            assert _within(actual, figure), f"{name} {part}: {actual:.3f}B vs card {figure}B"


@pytest.mark.parametrize("name", sorted(set(PRESETS) - SOURCED))
def test_unsourced_presets_refuse_random_init(name, tmp_path):
    from internvl_exp.config.validate import ConfigError, validate
    from internvl_exp.config.arch_rules import missing_arch_fields
    from internvl_exp.models.loading import build_model_on_meta

    m = _model(f"model={name}", "model.random_init=true")
    missing = missing_arch_fields(m)
    assert missing and all(k.startswith("model.arch.") for k in missing)
    with pytest.raises(ConfigError) as e:
        validate(compose([f"model={name}", "model.random_init=true"], tmp_path))
    assert f"model.random_init: preset {name!r} has no sourced value for" in str(e.value)
    assert all(k in str(e.value) for k in missing)
    with pytest.raises(ConfigError, match="has no sourced value for"):
        build_model_on_meta(m)


def test_random_init_of_a_real_preset_uses_the_tiny_tokenizer_ids(tmp_path, tokenizer):
    """Without a checkpoint, random init pairs the preset's architecture (real vocab) with the tiny tokenizer,
    whose image-context id the model config takes."""
    from internvl_exp.models.loading import random_config

    m = compose(["model=internvl3_5_1b", "model.random_init=true"], tmp_path).model
    config = random_config(m, tokenizer)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert config.text_config.vocab_size == 151936 and config.text_config.head_dim == 128
    assert config.tie_word_embeddings is False and config.image_seq_length == 256


SHRINK_VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
SHRINK_TEXT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 128, "vocab_size": 671, "head_dim": 16, "num_experts": 4,
               "num_experts_per_tok": 2, "moe_intermediate_size": 32}


# One sourced preset per text model_type (and both ViT kinds: internvl2_26b has the 6B's RMSNorm + qk-norm).
@pytest.mark.parametrize("name", ["internvl2_26b", "internvl3_1b", "internvl3_5_1b", "internvl3_5_30b_a3b",
                                  "internvl3_5_gpt_oss_20b_a4b"])
@pytest.mark.slow
def test_random_init_of_each_architecture_trains(name, tmp_path, tokenizer, demo_dir):
    """A sourced preset's architecture, shrunk (its kinds kept: model_type, norms, tie, MoE), builds through
    random init and trains two real steps on the tiny tokenizer: the LLM's weights move, the loss is finite."""
    from internvl_exp.data.from_config import build_from_config
    from training_helpers import build, changed, quick_cfg, snapshot, train

    m = _model(f"model={name}")
    shrink = [f"model.arch.vision.{k}={v}" for k, v in SHRINK_VISION.items()]
    shrink += [f"model.arch.text.{k}={v}" for k, v in SHRINK_TEXT.items() if m.arch.text[k] is not None]
    cfg = quick_cfg([f"model={name}", "model.random_init=true", "model.image_size=64", "model.patch_size=8",
                     "model.max_dynamic_patch=4", "model.dtype=float32", "model.template=internvl2_5", *shrink],
                    tmp_path, demo_dir)
    family, setup = build(cfg, tokenizer)
    model = setup.model
    assert model.config.text_config.model_type == m.arch.text.model_type
    assert model.config.vision_config.norm_type == m.arch.vision.norm_type
    dataset, _ = build_from_config(cfg, tokenizer, cfg.resolved.tokens_per_tile)
    before = snapshot(model)
    trainer = train(cfg, model, family, dataset, tokenizer, tmp_path)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(l) for l in losses)
    moved = changed(before, model)
    assert any(family.part_of(n) == "llm" for n in moved)
    assert not any(family.part_of(n) == "vision" for n in moved)  # freeze=vision (the default) holds


def test_gpt_oss_refuses_sdpa(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match="model.attn_implementation: transformers' GPT-OSS has no sdpa"):
        validate(compose(["model=internvl3_5_gpt_oss_20b_a4b", "model.template=internvl2_5",
                          "model.attn_implementation=sdpa"], tmp_path))
