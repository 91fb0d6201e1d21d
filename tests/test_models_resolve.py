"""Finding weights offline by one key: the HF cache layout, paths.models_dir, model.path; one clear error for
each way it can go wrong; and a native checkpoint found in a (fake) HF cache trains through launch.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose, launch_importing

NATIVE = "Test/Tiny-InternVL-hf"  # a Hub id only this test uses


def _cache_layout(hub: Path, repo_id: str, sha: str = "0123abcd") -> Path:
    """An empty snapshot folder in the HF cache layout: models--Org--Name/snapshots/<sha>/ and refs/main."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return repo / "snapshots" / sha


def _fake_checkpoint(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(b"")
    return directory


INTERNVL2_8B_LIKE = {  # the fields resolution reads, with the preset's values
    "model_type": "internvl_chat", "downsample_ratio": 0.5, "force_image_size": 448,
    "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "image_size": 448, "patch_size": 14},
    "llm_config": {"hidden_size": 4096, "num_hidden_layers": 32},
}


@pytest.fixture(scope="module")
def tiny_native(tmp_path_factory):
    """save_pretrained of a random tiny model (seed 123), its tokenizer and processor: a native checkpoint."""
    import torch

    from internvl_exp.models.loading import build_processor, load_model
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_native") / "ckpt"
    model_cfg = compose([]).model
    tokenizer = load_tiny_tokenizer()
    torch.manual_seed(123)
    model = load_model(model_cfg, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    build_processor(model_cfg, tokenizer, 16).save_pretrained(out)
    return out


# -- where it looks ---------------------------------------------------------------------------------------------
def test_hf_cache_location_follows_huggingface_hub_rules(tmp_path):
    from internvl_exp.models.resolve import hf_hub_cache

    assert hf_hub_cache({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}) == Path("/a")
    assert hf_hub_cache({"HF_HOME": "/b"}) == Path("/b/hub")
    assert hf_hub_cache({"XDG_CACHE_HOME": "/c"}) == Path("/c/huggingface/hub")
    assert hf_hub_cache({}) == Path.home() / ".cache" / "huggingface" / "hub"


def test_native_copy_wins_over_original_and_cache_over_models_dir(tmp_path):
    from internvl_exp.models.resolve import resolve_weights

    hub, models = tmp_path / "hub", tmp_path / "models"
    env = {"HF_HUB_CACHE": str(hub)}
    over = ["model=internvl2_8b", f"paths.models_dir={models}", f"model.hub.native={NATIVE}"]
    # Only the original, under <models_dir>/<org>/<name>.
    orig = _fake_checkpoint(models / "OpenGVLab" / "InternVL2-8B", INTERNVL2_8B_LIKE)
    w = resolve_weights(compose(over), env)
    assert (w.path, w.origin, w.layout) == (orig, "paths.models_dir", "original")
    # <models_dir>/<name> is looked at before <models_dir>/<org>/<name>.
    flat = _fake_checkpoint(models / "InternVL2-8B", INTERNVL2_8B_LIKE)
    assert resolve_weights(compose(over), env).path == flat
    # The original in the HF cache beats the models_dir copies of the same repo.
    snap = _fake_checkpoint(_cache_layout(hub, "OpenGVLab/InternVL2-8B"), INTERNVL2_8B_LIKE)
    assert resolve_weights(compose(over), env).path == snap
    # A native copy (in models_dir) beats every original copy: it needs no conversion.
    native_cfg = {**INTERNVL2_8B_LIKE, "model_type": "internvl", "text_config": INTERNVL2_8B_LIKE["llm_config"]}
    native = _fake_checkpoint(models / "Tiny-InternVL-hf", native_cfg)
    w = resolve_weights(compose(over), env)
    assert (w.path, w.layout) == (native, "native")
    # model.path wins over everything.
    other = _fake_checkpoint(tmp_path / "elsewhere", native_cfg)
    assert resolve_weights(compose([*over, f"model.path={other}"]), env).path == other


def test_refs_main_picks_the_snapshot(tmp_path):
    from internvl_exp.models.resolve import resolve_weights

    hub = tmp_path / "hub"
    snap = _fake_checkpoint(_cache_layout(hub, "OpenGVLab/InternVL2-8B", "bbbb"), INTERNVL2_8B_LIKE)
    _fake_checkpoint(snap.parent / "aaaa", INTERNVL2_8B_LIKE)  # another, older revision
    w = resolve_weights(compose(["model=internvl2_8b", f"paths.models_dir={tmp_path / 'none'}"]), {"HF_HUB_CACHE": str(hub)})
    assert w.path == snap and w.origin == "HF cache"


# -- what goes wrong --------------------------------------------------------------------------------------------


def test_missing_weights_stop_the_launch_with_one_message(tmp_path):
    """The headline command with an empty HF cache and HF_HUB_OFFLINE=1: non-zero exit, one message naming the
    Hub id, every place looked and the fetch command; no traceback; nothing heavy imported, no provenance."""
    import os

    models = tmp_path / "models"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    args = ["model=internvl2_8b", "data=mix", "freeze=vision", f"paths.output_dir={tmp_path / 'out'}",
            f"paths.models_dir={models}", "run_name=r"]
    res = launch_importing(args, env=env, timeout=300)
    err = res.stderr
    assert "EXIT=1" in err, err
    assert "Traceback" not in err
    assert err.rstrip().endswith("HEAVY="), err  # stopped before torch was imported
    line = next(l for l in err.splitlines() if l.startswith("run failed: WeightsNotFoundError"))
    for place in (tmp_path / "hf" / "hub" / "models--OpenGVLab--InternVL2-8B" / "snapshots",
                  models / "InternVL2-8B", models / "OpenGVLab" / "InternVL2-8B"):
        assert str(place) in line
    assert "Hub id OpenGVLab/InternVL2-8B" in line
    assert f"hf download OpenGVLab/InternVL2-8B --local-dir {models / 'InternVL2-8B'}" in line
    assert not any((tmp_path / "out").rglob("*"))  # failed before its first step: no run directory, no hint
    assert "to resume" not in err + res.stdout


def test_the_fetch_command_names_the_native_repo_when_there_is_one(tmp_path):
    from internvl_exp.models.resolve import WeightsNotFoundError, resolve_weights

    cfg = compose(["model=internvl3_2b", f"paths.models_dir={tmp_path}"])
    with pytest.raises(WeightsNotFoundError) as e:
        resolve_weights(cfg, {"HF_HUB_CACHE": str(tmp_path / "hub")})
    msg = str(e.value)
    assert f"hf download OpenGVLab/InternVL3-2B-hf --local-dir {tmp_path / 'InternVL3-2B-hf'}" in msg
    assert "OpenGVLab/InternVL3-2B-hf or OpenGVLab/InternVL3-2B" in msg
    assert "random_init" not in msg  # internvl3_2b's dims are not sourced: random init is not offered
    assert "\n" not in msg


def _one_line_error(overrides, env=None):
    from internvl_exp.models.resolve import CheckpointError, resolve_weights

    with pytest.raises(CheckpointError) as e:
        resolve_weights(compose(overrides), env or {"HF_HUB_CACHE": "/nonexistent"})
    assert "\n" not in str(e.value)
    return str(e.value)


def test_wrong_path(tmp_path):
    msg = _one_line_error(["model=internvl2_8b", f"model.path={tmp_path / 'nope'}"])
    assert msg.startswith(f"model.path: {tmp_path / 'nope'} does not exist")


def test_not_an_internvl_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in _one_line_error(["model=internvl2_8b", f"model.path={tmp_path / 'empty'}"])
    _fake_checkpoint(tmp_path / "llama", {"model_type": "llama", "hidden_size": 4096})
    msg = _one_line_error(["model=local", f"model.path={tmp_path / 'llama'}"])
    assert msg.startswith(f"model.path: {tmp_path / 'llama' / 'config.json'} has model_type 'llama', not an InternVL")


def test_checkpoint_of_another_size(tmp_path, tiny_native):
    msg = _one_line_error(["model=internvl2_8b", f"model.path={tiny_native}"])
    assert msg.startswith(f"model.path: {tiny_native / 'config.json'} does not match model=internvl2_8b")
    assert "text hidden_size 64 (the preset has 4096: model.arch.text.hidden_size)" in msg
    assert "text num_hidden_layers 2 (the preset has 32" in msg
    # Found in the HF cache instead of model.path: the error names the preset and where it was found.
    hub = tmp_path / "hub"
    snap = _cache_layout(hub, "OpenGVLab/InternVL2-8B")
    for f in tiny_native.iterdir():
        (snap / f.name).symlink_to(f)
    msg = _one_line_error(["model=internvl2_8b", f"paths.models_dir={tmp_path}"], {"HF_HUB_CACHE": str(hub)})
    assert msg.startswith(f"model=internvl2_8b (HF cache): {snap / 'config.json'} does not match model=internvl2_8b")


def test_incomplete_download_and_image_token_mismatch(tmp_path):
    d = tmp_path / "ckpt"
    _fake_checkpoint(d, {**INTERNVL2_8B_LIKE, "model_type": "internvl", "image_token_id": 151667})
    msg = _one_line_error(["model=internvl2_8b", f"model.path={d}"])
    assert "image_token_id 151667 (the config has model.image_token_id=92546)" in msg
    (d / "model.safetensors").unlink()
    msg = _one_line_error(["model=internvl2_8b", f"model.path={d}", "model.image_token_id=151667"])
    assert "has a config.json but no weight files" in msg


def test_model_path_never_silently_trains_the_tiny_model(tmp_path):
    from internvl_exp.config.validate import ConfigError, validate

    with pytest.raises(ConfigError, match=r"model.path: model=tiny is a random model and would ignore model.path"):
        validate(compose([f"model.path={tmp_path}"]))


# -- a native checkpoint in the HF cache trains ---------------------------------------------------------------
@pytest.mark.slow
def test_native_checkpoint_in_hf_cache_is_found_and_trains(tmp_path, tiny_native, demo_dir):
    """A preset-like model (the tiny architecture, with a Hub id and no random init) is found in a fake HF cache
    and trains 2 steps through launch.py. The frozen vision tower in final/ is the checkpoint's (seed 123), not a
    fresh random init: the weights were loaded."""
    import os

    import torch
    from safetensors.torch import load_file

    from conftest import run_launch

    hub = tmp_path / "hub"
    snap = _cache_layout(hub, NATIVE)
    for f in tiny_native.iterdir():
        (snap / f.name).symlink_to(f)
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    res = run_launch([f"model.hub.native={NATIVE}", "model.random_init=false", "trainer.max_steps=2",
                      "trainer.logging_steps=1", f"paths.output_dir={tmp_path / 'out'}",
                      f"paths.demo_data_dir={demo_dir}", f"paths.models_dir={tmp_path / 'models'}", "run_name=r"],
                     env={**os.environ, **env})
    assert res.returncode == 0, res.stderr[-4000:]
    run_dir = tmp_path / "out" / "default" / "r"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 2
    final = load_file(str(run_dir / "final" / "model.safetensors"))
    source = load_file(str(tiny_native / "model.safetensors"))
    vision = [k for k in source if "vision_tower." in k]  # saved keys follow the hub layout (no "model." prefix)
    assert vision and all(torch.equal(final[k], source[k]) for k in vision)
    assert not (run_dir / "final" / "base").exists()  # real weights exist elsewhere: no base copy
    assert (run_dir / "final" / "processor_config.json").exists()


def test_load_rechecks_the_checkpoint_and_uses_its_processor(tiny_native):
    """At load: the tokenizer's id of the image-context token must be the config's; the checkpoint's own
    processor is used, with the run's tile counts."""
    from internvl_exp.models.loading import CheckpointMismatchError, load_model, load_processor, load_tokenizer

    cfg = compose(["model.hub.native=" + NATIVE, "model.random_init=false", "model.max_dynamic_patch=2"]).model
    tokenizer = load_tokenizer(cfg, tiny_native)
    model = load_model(cfg, tokenizer, tiny_native)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    processor = load_processor(cfg, tokenizer, 16, tiny_native)
    assert processor.image_processor.max_patches == 2 and processor.image_seq_length == 16
    wrong = compose(["model.hub.native=" + NATIVE, "model.random_init=false", "model.image_context_token='<img>'"]).model
    with pytest.raises(CheckpointMismatchError, match=r"config.json: the checkpoint has image_token_id 5, but the tokenizer \(<img>\) says 3"):
        load_model(wrong, tokenizer, tiny_native)


def test_a_preset_without_weights_never_builds_a_random_model(tokenizer):
    from internvl_exp.errors import ConfigError
    from internvl_exp.models.loading import load_model, load_tokenizer

    cfg = compose(["model=internvl2_8b"]).model
    with pytest.raises(ConfigError, match="model=internvl2_8b needs its weights"):
        load_model(cfg, tokenizer)
    with pytest.raises(ConfigError, match="model=internvl2_8b needs its weights"):
        load_tokenizer(cfg)


def test_random_init_does_not_convert_an_original_checkpoint_for_its_tokenizer(tmp_path):
    from internvl_exp.models.loading import native_checkpoint
    from internvl_exp.models.resolve import Weights

    original = Weights(path=tmp_path, config={"model_type": "internvl_chat"}, origin="HF cache")
    native = Weights(path=tmp_path, config={"model_type": "internvl"}, origin="HF cache")
    assert native_checkpoint(original, tmp_path / "cache", random_init=True) is None
    assert native_checkpoint(native, tmp_path / "cache", random_init=True) == tmp_path
    assert native_checkpoint(None, tmp_path / "cache") is None
