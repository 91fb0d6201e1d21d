"""ensure_converted: content-keyed, converted once, atomic, shared by concurrent processes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from original_checkpoints import write_original_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def counted(monkeypatch):
    """Count real conversions (the real converter runs; the counter only observes it)."""
    import internvl_exp.models.convert.checkpoint as checkpoint

    calls = []
    real = checkpoint.convert_checkpoint
    import internvl_exp.models.convert.cache as cache  # the name ensure_converted calls

    def spy(src, dst, **kw):
        calls.append(Path(dst))
        return real(src, dst, **kw)

    monkeypatch.setattr(cache, "convert_checkpoint", spy)
    return calls


def test_second_call_is_a_cache_hit(tmp_path, counted, caplog):
    from internvl_exp.models.convert import ensure_converted

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    first = ensure_converted(w.path, tmp_path / "cache")
    assert first.parent == tmp_path / "cache" / "converted"
    assert (first / "conversion.json").is_file() and len(counted) == 1
    with caplog.at_level(logging.INFO, logger="internvl_exp.models.convert.cache"):
        again = ensure_converted(w.path, tmp_path / "cache")
    assert again == first and len(counted) == 1
    assert "cache hit" in caplog.text


def test_changed_shard_reconverts(tmp_path, counted):
    """Same shapes, new values in one shard (an updated upload): a new key, and the new weights are used."""
    from safetensors import safe_open

    from internvl_exp.models.convert import ensure_converted

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    first = ensure_converted(w.path, tmp_path / "cache")
    index = json.loads((w.path / "model.safetensors.index.json").read_text())["weight_map"]
    key = "mlp1.3.weight"
    tensors = load_file(str(w.path / index[key]))
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(w.path / index[key]), metadata={"format": "pt"})

    second = ensure_converted(w.path, tmp_path / "cache")
    assert second != first and len(counted) == 2
    out_index = json.loads((second / "model.safetensors.index.json").read_text())["weight_map"]
    target = "model.multi_modal_projector.linear_2.weight"
    with safe_open(str(second / out_index[target]), framework="pt") as f:
        torch.testing.assert_close(f.get_tensor(target), tensors[key])

    # Config edits re-key as well.
    cfg = json.loads((w.path / "config.json").read_text())
    cfg["max_dynamic_patch"] = 12
    (w.path / "config.json").write_text(json.dumps(cfg))
    assert ensure_converted(w.path, tmp_path / "cache") not in (first, second)


def test_leftover_partial_dir_is_not_trusted(tmp_path, counted):
    """A conversion killed midway leaves only a `.<key>.partial-*` dir: never returned, removed, redone."""
    from internvl_exp.models.convert import ensure_converted
    from internvl_exp.models.convert.cache import source_fingerprint

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    key = source_fingerprint(w.path)
    root = tmp_path / "cache" / "converted"
    stale = root / f".{key}.partial-12345-deadbeef"
    stale.mkdir(parents=True)
    (stale / "model-part-00001.safetensors").write_bytes(b"half a file")
    (stale / "config.json").write_text("{}")

    out = ensure_converted(w.path, tmp_path / "cache")
    assert out == root / key and len(counted) == 1
    assert not stale.exists()
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(out)).model_type == "internvl"


def test_killed_conversion_leaves_no_complete_looking_dir(tmp_path, monkeypatch):
    """An interrupt while streaming (Ctrl-C, a failing read) removes the partial dir and creates no key dir."""
    import internvl_exp.models.convert.checkpoint as checkpoint
    from internvl_exp.models.convert import ensure_converted

    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "run_plan", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_converted(w.path, tmp_path / "cache")
    root = tmp_path / "cache" / "converted"
    assert [p.name for p in root.iterdir() if p.is_dir()] == []


@pytest.mark.slow
def test_concurrent_processes_convert_once(tmp_path):
    """Two processes (two ranks) ask at once: one converts, the other waits and reuses the result."""
    w = write_original_checkpoint(tmp_path / "src", "qwen2", "300m")
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "from internvl_exp.models.convert import ensure_converted\n"
        f"print(ensure_converted({str(w.path)!r}, {str(tmp_path / 'cache')!r}))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    logs = "".join(o[1] for o in outs)
    assert logs.count("converting original checkpoint") == 1
    assert "cache hit" in logs
