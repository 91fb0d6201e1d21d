"""tools.export on real runs: a model=local run trained from the golden original checkpoint (full fine-tune and
LoRA) exports to the original layout; converting the export back gives final/'s logits. Plus the CLI's errors,
--layout native, and the peak memory of exporting a sharded checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import fixture, run_launch
from original_checkpoints import Dims, write_original_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = fixture("original_layout", "qwen2_vit300m")


def _train(tmp_path: Path, demo_dir: Path, name: str, *extra: str) -> Path:
    golden = tmp_path / "golden"
    if not golden.is_dir():
        shutil.copytree(GOLDEN, golden)
    res = run_launch([
        "model=local", f"model.path={golden}", "model.template=internvl2_5", "model.image_size=56",
        "model.dtype=float32", "model.attn_implementation=eager", "trainer.max_steps=2", "trainer.logging_steps=1",
        "data.max_seq_length=4096", "optimizer.lr=1e-3", f"paths.output_dir={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}", f"paths.demo_data_dir={demo_dir}", f"run_name={name}", *extra,
    ])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp_path / "out" / "default" / name


def _export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "internvl_exp.tools.export", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def _logits(model_dir: Path, ref: dict) -> torch.Tensor:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids=ref["input_ids"], pixel_values=ref["pixel_values"]).logits


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, demo_dir) -> Path:
    return _train(tmp_path_factory.mktemp("export_run"), demo_dir, "full")


def test_trained_run_exports_and_converts_back_to_the_same_logits(full_run, tmp_path):
    from internvl_exp.models.convert import convert_checkpoint

    r = _export_cli(str(full_run), "--layout", "original", "--out", str(tmp_path / "exported"), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checked to convert back" in r.stdout and "OpenGVLab/InternVL2_5-1B" in r.stdout  # no .py in the source
    out = tmp_path / "exported"
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "internvl_chat" and config["architectures"] == ["InternVLChatModel"]
    assert config["template"] == "internvl2_5" and config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert config["llm_config"]["use_cache"] is True  # the source's, not training's off switch
    report = json.loads((out / "export.json").read_text())
    assert report["source_checkpoint"].endswith("golden") and report["tokenizer"].startswith("copied from")
    assert (out / "tokenizer.json").read_bytes() == (GOLDEN / "tokenizer.json").read_bytes()

    convert_checkpoint(out, tmp_path / "back", show_progress=False)
    ref = torch.load(GOLDEN / "reference.pt")
    final = _logits(full_run / "final", ref)
    back = _logits(tmp_path / "back", ref)
    assert (final - ref["logits"]).abs().max().item() > 1e-4  # training moved the weights
    assert (back - final).abs().max().item() < 1e-6


def test_layout_native_copies_final(full_run, tmp_path):
    r = _export_cli(str(full_run), "--layout", "native", "--out", str(tmp_path / "native"))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert (tmp_path / "native" / name).read_bytes() == (full_run / "final" / name).read_bytes()
    assert not (tmp_path / "native" / "training_args.bin").exists()


@pytest.mark.slow  # 2 processes, or a signal-driven end-to-end run (make test-fast leaves it out)
def test_lora_run_is_merged_then_exported(tmp_path, demo_dir):
    from internvl_exp.models.convert import convert_checkpoint

    run = _train(tmp_path, demo_dir, "lora", "freeze=lora_llm")
    assert (run / "final" / "adapter_config.json").is_file()
    r = _export_cli(str(run), "--layout", "original", "--out", str(tmp_path / "exported"), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "merging the LoRA adapter" in r.stdout
    convert_checkpoint(tmp_path / "exported", tmp_path / "back", show_progress=False)

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    ref = torch.load(GOLDEN / "reference.pt")
    base = AutoModelForImageTextToText.from_pretrained(
        json.loads((run / "final" / "adapter_config.json").read_text())["base_model_name_or_path"],
        dtype=torch.float32, attn_implementation="eager")
    adapted = PeftModel.from_pretrained(base, str(run / "final")).eval()
    with torch.no_grad():
        want = adapted(input_ids=ref["input_ids"], pixel_values=ref["pixel_values"]).logits
    got = _logits(tmp_path / "back", ref)
    assert (want - ref["logits"]).abs().max().item() > 1e-5  # the adapter changes the output
    assert (got - want).abs().max().item() < 1e-5  # merged (W + BA folded in float32) vs applied on the fly


def test_errors_are_one_line(tmp_path, capsys):
    from internvl_exp.models.convert import convert_checkpoint
    from internvl_exp.tools.export import main

    assert main([str(GOLDEN), "--layout", "original", "--out", str(tmp_path / "x")]) == 2
    assert "already in the original layout" in capsys.readouterr().err

    w = write_original_checkpoint(tmp_path / "src", "llama", "300m")
    convert_checkpoint(w.path, tmp_path / "native", show_progress=False)
    (tmp_path / "native" / "conversion.json").unlink()  # no record of the source
    assert main([str(tmp_path / "native"), "--layout", "original", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "pass --llm-family" in err and err.count("\n") == 1
    (tmp_path / "native" / "chat_template.jinja").unlink()
    assert main([str(tmp_path / "native"), "--layout", "original", "--out", str(tmp_path / "y"),
                 "--llm-family", "llama"]) == 2
    assert "pass --template" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


# The export runs in a fresh process: a small export first loads every module and builds the meta models. Then
# the kernel's peak-RSS mark is reset (writing 5 to /proc/self/clear_refs resets VmHWM) and the big export's
# growth is its peak (VmHWM after) minus what was resident before (VmRSS).
MEASURE = """
import re, sys
from pathlib import Path
from internvl_exp.models.convert.export import export_original

def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

root = Path(sys.argv[1])
export_original(root / "small_native", root / "small_out", show_progress=False)
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
export_original(root / "big_native", root / "big_out", show_progress=False)
print(status("VmHWM") - before)
"""


def test_export_peak_memory_is_about_two_shards(tmp_path):
    from internvl_exp.models.convert import convert_checkpoint

    write_original_checkpoint(tmp_path / "small", "internlm2", "300m")
    big = Dims(hidden=512, layers=8, heads=8, kv_heads=2, head_dim=64, inter=1536)
    write_original_checkpoint(tmp_path / "big", "internlm2", "300m", dims=big, num_shards=16)
    convert_checkpoint(tmp_path / "small", tmp_path / "small_native", show_progress=False)
    convert_checkpoint(tmp_path / "big", tmp_path / "big_native", show_progress=False)
    shards = list((tmp_path / "big_native").glob("*.safetensors"))
    model_bytes = sum(p.stat().st_size for p in shards)
    largest = max(p.stat().st_size for p in shards)
    assert len(shards) >= 8 and model_bytes > 6 * largest

    r = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    growth = int(r.stdout.strip().splitlines()[-1])
    print(f"export peak RSS growth {growth / 1e6:.1f} MB; largest shard {largest / 1e6:.1f} MB; model {model_bytes / 1e6:.1f} MB")
    assert growth < 2.5 * largest, (growth, largest, model_bytes)


def test_layout_native_of_an_original_checkpoint_converts_it(tmp_path, capsys):
    from internvl_exp.models.convert.verify import written_tensors
    from internvl_exp.tools.export import main

    assert main([str(GOLDEN), "--layout", "native", "--out", str(tmp_path / "native"), "--no-progress"]) == 0
    assert "native layout" in capsys.readouterr().out
    config = json.loads((tmp_path / "native" / "config.json").read_text())
    assert config["model_type"] == "internvl" and "model.language_model.embed_tokens.weight" in written_tensors(tmp_path / "native")
