"""The converter on the golden original-layout checkpoint (tests/fixtures/original_layout), whose logits were
computed by OpenGVLab's own code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, fixture

GOLDEN = fixture("original_layout", "qwen2_vit300m")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    from internvl_exp.models.convert import convert_checkpoint

    dst = tmp_path_factory.mktemp("golden") / "native"
    convert_checkpoint(GOLDEN, dst, show_progress=False)
    return dst


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_golden_logits_match_the_original_model(converted, attn):
    from transformers import AutoModelForImageTextToText

    ref = torch.load(GOLDEN / "reference.pt")
    model = AutoModelForImageTextToText.from_pretrained(str(converted), dtype=torch.float32, attn_implementation=attn)
    with torch.no_grad():
        logits = model.eval()(input_ids=ref["input_ids"], pixel_values=ref["pixel_values"]).logits
    # Measured: 3.7e-9 (eager), 2.2e-8 (sdpa); the logits are ~0.1 in size, and a wrong q/k/v split is off by ~1e-2.
    assert (logits - ref["logits"]).abs().max().item() < 1e-6


def test_golden_config_tokenizer_and_processor(converted):
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    cfg = AutoConfig.from_pretrained(str(converted))
    assert cfg.model_type == "internvl" and cfg.text_config.model_type == "qwen2"
    assert cfg.image_token_id == 593 and cfg.image_seq_length == 4  # (56/14)^2 * 0.5^2
    assert cfg.tie_word_embeddings is False and cfg.text_config.tie_word_embeddings is False
    assert cfg.vision_config.attention_bias is True and cfg.vision_config.use_qk_norm is False
    assert cfg.vision_config.norm_type == "layer_norm" and cfg.vision_feature_layer == -1
    assert GenerationConfig.from_pretrained(str(converted)).eos_token_id == 590  # <|im_end|>

    proc = AutoProcessor.from_pretrained(str(converted))
    assert (proc.image_token, proc.start_image_token, proc.end_image_token) == ("<IMG_CONTEXT>", "<img>", "</img>")
    assert (proc.image_token_id, proc.start_image_token_id, proc.end_image_token_id) == (593, 591, 592)
    assert proc.image_seq_length == 4
    ip = proc.image_processor
    assert (ip.size.height, ip.size.width, ip.min_patches, ip.max_patches) == (56, 56, 1, 6)
    assert list(ip.image_mean) == pytest.approx([0.485, 0.456, 0.406])

    # The prompt expansion of a real image goes through the saved processor end to end.
    from PIL import Image

    out = proc(images=[Image.new("RGB", (112, 56), "red")], text=["look <IMG_CONTEXT> here"], return_tensors="pt")
    tiles = out["pixel_values"].shape[0]
    assert tiles == 3  # a 2x1 grid plus the thumbnail
    assert int((out["input_ids"] == 593).sum()) == 4 * tiles

    report = json.loads((converted / "conversion.json").read_text())
    assert report["family"] == "qwen2" and report["source_tensors"] == 65 and report["target_tensors"] == 73


@pytest.mark.slow  # the tool in a subprocess; the same conversion runs in-process above
def test_cli_converts_the_golden_dir(tmp_path):
    dst = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "internvl_exp.tools.convert", str(GOLDEN), str(dst)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout
    assert (dst / "model.safetensors.index.json").is_file() and (dst / "processor_config.json").is_file()
    assert not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.parametrize("kind", ["not_internvl", "missing"])
def test_cli_error_is_one_line(tmp_path, kind):
    src = tmp_path / "src"
    if kind == "not_internvl":
        src.mkdir()
        (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    r = subprocess.run([sys.executable, "-m", "internvl_exp.tools.convert", str(src), str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert str(src) in lines[0]
    assert ("not an original OpenGVLab InternVL checkpoint" if kind == "not_internvl" else "no such directory") in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_help_and_layout_check_do_not_import_torch():
    code = ("import sys\nfrom internvl_exp.tools import convert\ntry:\n    convert.parse_args(['--help'])\n"
            "except SystemExit:\n    pass\nimport internvl_exp.models.convert as c\n"
            f"assert c.is_original_layout(__import__('pathlib').Path({str(GOLDEN)!r}))\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "InternLM2" in r.stdout and "SRC" in r.stdout
