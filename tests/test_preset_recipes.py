"""Each real model preset carries InternVL's own fine-tuning recipe (`model.recipe`) and its script's tiles and
drop-path rate. Oracles: the experiment of the same release (conf/experiment/<preset>_finetune_full.yaml, written
and tested separately against the script's lines), and for InternVL3.5, which has none, a transcription here."""

from __future__ import annotations

import functools

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose

PRESETS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem not in ("tiny", "local"))
EXPERIMENTS = {p.stem.removesuffix("_finetune_full") for p in (CONF / "experiment").glob("*_finetune_full.yaml")}

# OpenGVLab/InternVL@2410d1d internvl_chat_gpt_oss/shell/internvl3_5_qwen3/internvl3_5_<size>_sft.sh and
# internvl3_5_gpt_oss/internvl3_5_gpt_oss_20b_stage2_sft.sh: (--learning_rate, --drop_path_rate); every one of
# them has --weight_decay 0.05, --warmup_ratio 0.03, cosine, --max_seq_length 32768, --bf16 True,
# --grad_checkpoint True, --max_dynamic_patch 12.
INTERNVL3_5 = {
    "internvl3_5_1b": (8e-5, 0.0), "internvl3_5_2b": (8e-5, 0.0), "internvl3_5_4b": (8e-5, 0.0),
    "internvl3_5_8b": (8e-5, 0.1), "internvl3_5_14b": (8e-5, 0.1), "internvl3_5_38b": (8e-5, 0.4),
    "internvl3_5_30b_a3b": (8e-5, 0.1), "internvl3_5_241b_a28b": (2e-5, 0.4),
    "internvl3_5_gpt_oss_20b_a4b": (8e-5, 0.1),
}


@functools.lru_cache(maxsize=None)
def _plain(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides)), resolve=True)


def test_every_real_preset_has_an_oracle():
    assert set(PRESETS) == EXPERIMENTS | set(INTERNVL3_5)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_recipe_is_its_releases_script(name):
    m = _plain(f"model={name}")["model"]
    r = m["recipe"]
    assert r["name"] == name
    assert r["source"].startswith("OpenGVLab/InternVL@2410d1d internvl_chat")
    assert r["source"].split()[1].endswith(".sh")
    if name in INTERNVL3_5:
        lr, drop_path = INTERNVL3_5[name]
        assert r["source"].split()[1].endswith("_sft.sh") and "InternVL3.5 has no 2nd-stage script" in r["source"]
        expected = {"lr": lr, "weight_decay": 0.05, "warmup_ratio": 0.03, "scheduler": "cosine",
                    "max_seq_length": 32768, "bf16": True, "activation_checkpointing": True}
        tiles = 12
    else:  # the release's own 2nd-stage full fine-tune, as its experiment reproduces it
        assert "/2nd_finetune/" in r["source"] and r["source"].endswith("_full.sh")
        e = _plain(f"experiment={name}_finetune_full", "data.meta_path=/data/meta.json")
        assert e["model"]["name"] == name
        opt, tr = e["optimizer"], e["trainer"]
        expected = {"lr": opt["lr"], "weight_decay": opt["weight_decay"], "warmup_ratio": opt["warmup_ratio"],
                    "scheduler": opt["scheduler"], "max_seq_length": e["data"]["max_seq_length"],
                    "bf16": tr["bf16"], "activation_checkpointing": tr["activation_checkpointing"]}
        drop_path, tiles = e["model"]["drop_path_rate"], e["model"]["max_dynamic_patch"]
    assert {k: r[k] for k in expected} == pytest.approx(expected)
    # The preset's own keys follow the same script.
    assert m["drop_path_rate"] == pytest.approx(drop_path) and m["max_dynamic_patch"] == tiles


def test_docs_recipe_table_matches_the_presets():
    """docs/models.md's recipe table is the presets' (a changed preset without its docs fails here)."""
    import re

    from conftest import ROOT

    text = (ROOT / "docs" / "models.md").read_text()
    rows = {m.group(1): m.group(2).split(" | ") for m in re.finditer(r"^\| `(\w+)` \| (\d.*) \|$", text, re.M)}
    for name in PRESETS:
        m = _plain(f"model={name}")["model"]
        r = m["recipe"]
        lr, wd, seq, drop_path, tiles, script = rows[name]
        assert (float(lr), float(wd), int(seq), float(drop_path), int(tiles)) == pytest.approx(
            (r["lr"], r["weight_decay"], r["max_seq_length"], m["drop_path_rate"], m["max_dynamic_patch"])), name
        assert script.strip("`") in r["source"], name
