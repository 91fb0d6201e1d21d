"""Every jsonl line type InternVL accepts, through the real pipeline (meta JSON -> scan -> dataset item):
pure text, single image, multi-image, video (file via PyAV, frame folder, gif; frame counts, random and
middle sampling, clip), system turns, grounding text, and path resolution against `root`."""

from __future__ import annotations

import json
import random

import pytest
import torch

from data_media import conv, frame_index, pixels, write_frame_folder, write_gif, write_image, write_jsonl, write_video
from internvl_exp.data.dataset import ImageSettings, build_dataset
from internvl_exp.data.sources import load_entries
from internvl_exp.data.templates import IGNORE_INDEX
from internvl_exp.data.video import frame_indices

TILE, TOKENS = 32, 4


def build(tmp_path, tokenizer, rows, name="ds", spec=None, **settings):
    ann = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    entries = load_entries(None, {name: {"annotation": str(ann), "root": str(tmp_path), **(spec or {})}})
    s = ImageSettings(tile_size=TILE, tokens_per_tile=TOKENS, max_dynamic_patch=4, **settings)
    return build_dataset(entries, tokenizer, "internvl2_5", s, max_seq_length=8192)


def text_of(tokenizer, item) -> str:
    return tokenizer.decode(item["input_ids"].tolist())


def supervised(tokenizer, item) -> str:
    return tokenizer.decode([t for t in item["labels"].tolist() if t != IGNORE_INDEX])


def test_pure_text(tmp_path, tokenizer):
    ds, report = build(tmp_path, tokenizer, [{"id": 1, "conversations": conv("Hello", "Hi there.")}])
    item = ds[0]
    assert "pixel_tiles" not in item and pixels(item) is None
    assert "<img>" not in text_of(tokenizer, item)
    assert supervised(tokenizer, item) == "Hi there.<|im_end|>"
    assert report.samples == 1 and report.per_dataset == {"ds": 1}


def test_single_image_with_and_without_placeholder(tmp_path, tokenizer):
    write_image(tmp_path / "img" / "a.png", (64, 64))
    rows = [
        {"image": "img/a.png", "conversations": conv("<image>\nWhat is it?", "A square.")},
        {"image": "img/a.png", "conversations": conv("What is it?", "A square.")},  # placeholder auto-inserted
        {"image": "img/a.png", "conversations": [{"from": "system", "value": "Be brief."}] + conv("What is it?", "A square.")},
    ]
    ds, _ = build(tmp_path, tokenizer, rows)
    first, second, third = ds[0], ds[1], ds[2]
    assert first["input_ids"].tolist() == second["input_ids"].tolist()
    assert ds.samples[1].conversations[0]["value"] == "<image>\nWhat is it?"
    assert ds.samples[2].conversations[1]["value"] == "<image>\nWhat is it?"  # into the first human turn
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text_of(tokenizer, third)
    for item in (first, second, third):
        # 64x64 with max 4 tiles of 32: a 2x2 grid + thumbnail = 5 tiles, 5 * TOKENS context tokens.
        assert pixels(item).shape == (5, 3, TILE, TILE)
        assert (item["input_ids"] == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).sum() == 5 * TOKENS


def test_multi_image_pixels_follow_placeholder_order(tmp_path, tokenizer):
    write_image(tmp_path / "red.png", (32, 32), (255, 0, 0))
    write_image(tmp_path / "blue.png", (32, 32), (0, 0, 255))
    rows = [{"image": ["red.png", "blue.png"], "conversations": conv("Image-1: <image>\nImage-2: <image>\nWhich is red?", "The first.")}]
    ds, _ = build(tmp_path, tokenizer, rows)
    item = ds[0]
    px = pixels(item)
    assert px.shape[0] == 2
    assert px[0, 0].mean() > px[0, 2].mean() and px[1, 2].mean() > px[1, 0].mean()  # red first, blue second
    text = text_of(tokenizer, item)
    assert text.count("<img>") == 2 and text.count("</img>") == 2
    assert "Image-1: <img>" in text and "Image-2: <img>" in text


def test_role_aliases_and_case(tmp_path, tokenizer):
    rows = [{"conversations": [{"from": "System", "value": "Be brief."}, {"from": "user", "value": "Hi"},
                               {"from": "assistant", "value": "Hello."}]}]
    ds, _ = build(tmp_path, tokenizer, rows)
    assert [t["from"] for t in ds.samples[0].conversations] == ["system", "human", "gpt"]
    assert text_of(tokenizer, ds[0]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert supervised(tokenizer, ds[0]) == "Hello.<|im_end|>"


def test_grounding_text_passes_through(tmp_path, tokenizer):
    write_image(tmp_path / "a.png")
    answer = "<ref>the cat</ref><box>[[120, 40, 560, 980]]</box>"
    rows = [{"image": "a.png", "conversations": conv("<image>\nPlease provide the bounding box of <ref>the cat</ref>", answer)}]
    ds, _ = build(tmp_path, tokenizer, rows)
    item = ds[0]
    assert supervised(tokenizer, item) == answer + "<|im_end|>"
    for tok in ("<ref>", "</ref>", "<box>", "</box>"):  # InternVL's grounding tokens stay single tokens
        assert tokenizer.convert_tokens_to_ids(tok) in item["input_ids"].tolist()


def test_relative_paths_resolve_against_root_and_meta_folder(tmp_path, tokenizer):
    data = tmp_path / "data"
    write_image(data / "media" / "images" / "a.png")
    write_jsonl(data / "ann" / "x.jsonl", [{"image": "images/a.png", "conversations": conv("<image>\nQ?", "A.")}])
    meta = data / "meta.json"
    meta.write_text(json.dumps({"x": {"root": "media", "annotation": "ann/x.jsonl", "repeat_time": 1, "data_augment": False}}))
    entries = load_entries(str(meta))
    assert entries[0].root == data / "media" and entries[0].annotation == data / "ann" / "x.jsonl"
    ds, _ = build_dataset(entries, tokenizer, "internvl2_5", ImageSettings(tile_size=TILE, tokens_per_tile=TOKENS), 4096)
    assert ds.samples[0].images == [data / "media" / "images" / "a.png"]
    assert pixels(ds[0]).shape[1:] == (3, TILE, TILE)


# --- video ------------------------------------------------------------------------------------------

def test_frame_indices_one_per_segment():
    rng = random.Random(0)
    assert frame_indices(30, 3, "middle", rng) == [4, 14, 24]
    assert frame_indices(4, 8, "middle", rng) == [0, 1, 2, 3]  # never more frames than the video has
    for _ in range(200):
        count, n = rng.randint(1, 300), rng.randint(1, 40)
        idx = frame_indices(count, n, "rand", rng)
        assert len(idx) == min(n, count) and idx == sorted(idx) and len(set(idx)) == len(idx)
        bounds = [round(k * count / len(idx)) for k in range(len(idx) + 1)]
        assert all(lo <= i < hi for i, lo, hi in zip(idx, bounds, bounds[1:]))
    with pytest.raises(ValueError, match="frame_sampling"):
        frame_indices(10, 2, "fps1", rng)


def _video_rows(path, **extra):
    return [{"video": path, "conversations": conv("<video>\nWhat happens?", "Nothing."), **extra}]


def test_video_file_expansion_frame_count_and_sampling(tmp_path, tokenizer):
    write_video(tmp_path / "v.mp4", frames=30)
    ds, _ = build(tmp_path, tokenizer, _video_rows("v.mp4") * 6, min_num_frame=3, max_num_frame=6, frame_sampling="middle")
    counts = set()
    for i, sample in enumerate(ds.samples):
        n = sample.num_frames
        counts.add(n)
        assert 3 <= n <= 6 and sample.num_tiles == [1] * n  # each frame is one tile
        expected = "\n".join(f"Frame-{k + 1}: <image>" for k in range(n)) + "\nWhat happens?"
        assert sample.conversations[0]["value"] == expected
        item = ds[i]
        assert pixels(item).shape == (n, 3, TILE, TILE)
        text = text_of(tokenizer, item)
        assert text.count("<img>") == n and f"Frame-{n}: <img>" in text
        got = [frame_index(t) for t in pixels(item)]
        assert got == frame_indices(30, n, "middle", random.Random())  # middle sampling is exact
    assert len(counts) > 1  # the count is drawn per line... (seeded: same lines, same counts)
    again, _ = build(tmp_path, tokenizer, _video_rows("v.mp4") * 6, min_num_frame=3, max_num_frame=6, frame_sampling="middle")
    assert [s.num_frames for s in again.samples] == [s.num_frames for s in ds.samples]


def test_video_random_sampling_is_seeded_and_one_frame_per_segment(tmp_path, tokenizer):
    write_video(tmp_path / "v.mp4", frames=30)
    ds, _ = build(tmp_path, tokenizer, _video_rows("v.mp4") * 4, min_num_frame=5, max_num_frame=5)
    picks = []
    for i in range(4):
        got = [frame_index(t) for t in pixels(ds[i])]
        assert got == [frame_index(t) for t in pixels(ds[i])]  # reproducible per index
        assert all(6 * k <= g < 6 * (k + 1) for k, g in enumerate(got))  # one frame from each sixth
        picks.append(tuple(got))
    assert len(set(picks)) > 1  # different samples draw different frames


def test_video_clip_limits_frames_to_the_clip(tmp_path, tokenizer):
    write_video(tmp_path / "v.mp4", frames=40, fps=10)
    ds, _ = build(tmp_path, tokenizer, _video_rows("v.mp4", clip=[1.0, 2.5]), min_num_frame=4, max_num_frame=4)
    assert ds.samples[0].video.info.first == 10 and ds.samples[0].video.info.count == 15
    got = [frame_index(t) for t in pixels(ds[0])]
    assert len(got) == 4 and all(10 <= g < 25 for g in got)


def test_short_video_gives_its_frames_only(tmp_path, tokenizer):
    write_video(tmp_path / "short.mp4", frames=3)
    ds, _ = build(tmp_path, tokenizer, _video_rows("short.mp4"), min_num_frame=8, max_num_frame=8)
    assert [frame_index(t) for t in pixels(ds[0])] == [0, 1, 2]


def test_frame_folder_in_natural_order(tmp_path, tokenizer):
    write_frame_folder(tmp_path / "frames", 12)
    ds, _ = build(tmp_path, tokenizer, _video_rows("frames/"), min_num_frame=12, max_num_frame=12)
    assert ds.samples[0].video.info.kind == "folder"
    assert [frame_index(t) for t in pixels(ds[0])] == list(range(12))  # frame_2 before frame_10


def test_gif_with_and_without_clip(tmp_path, tokenizer):
    write_gif(tmp_path / "a.gif", 20, duration_ms=100)
    ds, _ = build(tmp_path, tokenizer, _video_rows("a.gif") + _video_rows("a.gif", clip=[0.5, 1.0]), min_num_frame=20, max_num_frame=20)
    assert [frame_index(t) for t in pixels(ds[0])] == list(range(20))
    assert [frame_index(t) for t in pixels(ds[1])] == [5, 6, 7, 8, 9]


def test_video_placeholder_inserted_when_missing(tmp_path, tokenizer):
    write_video(tmp_path / "v.mp4", frames=10)
    rows = [{"video": "v.mp4", "conversations": conv("Describe the clip.", "Grey.")}]
    ds, _ = build(tmp_path, tokenizer, rows, min_num_frame=2, max_num_frame=2)
    assert ds.samples[0].conversations[0]["value"] == "Frame-1: <image>\nFrame-2: <image>\nDescribe the clip."


def test_mixed_batch_runs_through_the_tiny_model(tmp_path, tokenizer, demo_dir):
    """Video, multi-image, single-image and text samples collate into one batch the native model accepts
    (its placeholder-count check would fail on any mismatch between tokens and tiles)."""
    from conftest import compose
    from internvl_exp.data.collator import Collator
    from internvl_exp.models.loading import config_tokens_per_tile, load_model

    cfg = compose([], tmp_path, demo_dir)
    model = load_model(cfg.model, tokenizer)
    n_tok = config_tokens_per_tile(model.config)
    assert cfg.resolved.tokens_per_tile == n_tok  # the config-only count the scan (and data_check) can use
    write_video(tmp_path / "v.mp4", frames=12)
    write_image(tmp_path / "a.png", (150, 60))
    write_image(tmp_path / "b.png", (40, 90), (0, 0, 255))
    rows = [
        {"video": "v.mp4", "conversations": conv("<video>\nWhat happens?", "Nothing.")},
        {"image": ["a.png", "b.png"], "conversations": conv("<image>\n<image>\nSame?", "No.")},
        {"image": "a.png", "conversations": conv("Colour?", "Red.")},
        {"conversations": conv("Hello", "Hi.")},
    ]
    ann = write_jsonl(tmp_path / "mixed.jsonl", rows)
    entries = load_entries(None, {"mixed": {"annotation": str(ann), "root": str(tmp_path)}})
    settings = ImageSettings(tile_size=cfg.model.image_size, tokens_per_tile=n_tok, max_dynamic_patch=4, min_num_frame=3, max_num_frame=3)
    ds, _ = build_dataset(entries, tokenizer, cfg.model.template, settings, 4096)
    batch = Collator(tokenizer.pad_token_id)([ds[i] for i in range(4)])
    assert batch["pixel_values"].shape[0] == sum(sum(s.num_tiles) for s in ds.samples)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)


def test_checkpoint_tile_size_must_match_the_model_config(tmp_path, tokenizer, demo_dir):
    """A checkpoint whose tiles differ from model.image_size stops before the scan (at weight resolution), naming
    the key and the checkpoint's value; tokens per tile then come from the model config alone."""
    from conftest import compose
    from internvl_exp.models.loading import config_tokens_per_tile, random_config
    from internvl_exp.models.resolve import CheckpointError, resolve_weights

    tiny = compose([], tmp_path, demo_dir).model
    config = random_config(tiny, tokenizer)
    config.save_pretrained(tmp_path / "ckpt")
    local = ["model=local", f"model.path={tmp_path / 'ckpt'}", "model.template=internvl2_5", "model.patch_size=8"]
    cfg = compose([*local, "model.image_size=64"], tmp_path, demo_dir)
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"")  # resolution looks for weight files only
    assert resolve_weights(cfg) is not None
    assert cfg.resolved.tokens_per_tile == config_tokens_per_tile(config) == 16
    cfg = compose([*local, "model.image_size=32"], tmp_path, demo_dir)
    with pytest.raises(CheckpointError, match=r"model.path: .*config.json does not match model=local: it has image_size 64 \(the config has model.image_size=32\)"):
        resolve_weights(cfg)


def test_video_settings_are_validated():
    with pytest.raises(ValueError, match="min_num_frame <= max_num_frame"):
        ImageSettings(tile_size=TILE, tokens_per_tile=TOKENS, min_num_frame=9, max_num_frame=4)
    with pytest.raises(ValueError, match="data.frame_sampling must be one of"):
        ImageSettings(tile_size=TILE, tokens_per_tile=TOKENS, frame_sampling="fps1")


def test_a_large_scan_shows_progress_on_a_terminal_and_plans_every_line(tmp_path, tokenizer, monkeypatch):
    """Past PROGRESS_MIN_LINES the scan wraps its loop in a progress bar (shown on a terminal only)."""
    import internvl_exp.data.prescan as dataset_mod
    from internvl_exp.data.dataset import scan
    from internvl_exp.data.planner import ImageSettings
    from internvl_exp.data.sources import load_entries

    monkeypatch.setattr(dataset_mod, "PROGRESS_MIN_LINES", 50)
    bars = []
    real_tqdm = dataset_mod.tqdm
    monkeypatch.setattr(dataset_mod, "tqdm", lambda *a, **kw: bars.append(kw) or real_tqdm(*a, **kw))
    ann = tmp_path / "t.jsonl"
    conv = [{"from": "human", "value": "What number comes after 3?"}, {"from": "gpt", "value": "4."}]
    ann.write_text("".join(json.dumps({"conversations": conv}) + "\n" for _ in range(60)))
    entries = load_entries(None, {"t": {"annotation": str(ann)}})
    samples, report = scan(entries, tokenizer, "internvl2_5", ImageSettings(tile_size=64, tokens_per_tile=16), 512)
    assert len(samples) == 60 and report.per_dataset == {"t": 60}
    assert bars and bars[0]["disable"] is None and bars[0]["desc"] == "pre-flight data scan"
    ann.write_text("".join(json.dumps({"conversations": conv}) + "\n" for _ in range(10)))
    scan(entries, tokenizer, "internvl2_5", ImageSettings(tile_size=64, tokens_per_tile=16), 512)
    assert bars[-1]["disable"] is True  # small sets: no bar


def test_video_sampling_seeks_and_decodes_only_near_the_sampled_frames(tmp_path):
    """Frames are reached by seeking to the keyframe before them, not by decoding from the start."""
    import numpy as np

    from data_media import LEVEL0, STEP
    from internvl_exp.data.video import decode_frames, load_frames, probe_video

    path = write_video(tmp_path / "long.mp4", frames=40, fps=10, gop=5)
    info = probe_video(path, "long.mp4")
    assert info.count == 40

    def shown(image):
        return int(round((np.asarray(image, dtype=np.float64).mean() - LEVEL0) / STEP))

    picked, decoded = decode_frames(path, [31, 36, 38])
    assert {i: shown(im) for i, im in picked.items()} == {31: 31, 36: 36, 38: 38}
    assert decoded <= 9  # a keyframe and the frames up to each target; decoding from the start takes 39
    picked, decoded = decode_frames(path, [2, 3, 4, 21, 39])
    assert {i: shown(im) for i, im in picked.items()} == {2: 2, 3: 3, 4: 4, 21: 21, 39: 39}
    assert decoded <= 5 + 2 + 5
    # Through the sampler's entry point, with a clip starting at frame 10 (indices relative to the clip).
    clip = probe_video(path, "long.mp4", [1.0, 3.0])
    assert (clip.first, clip.count) == (10, 20)
    assert [shown(f) for f in load_frames(path, "long.mp4", clip, [0, 7, 19])] == [10, 17, 29]


def test_header_sizes_equal_pil_for_every_format_and_errors_match(tmp_path):
    """The scan's header reader (JPEG/PNG parsed directly, the rest through PIL) gives PIL's size, and PIL's error."""
    import numpy as np
    from PIL import Image

    from internvl_exp.data.image_header import header_size

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "x" * 5000  # orientation (not applied to the size), a long APP1 segment
    cases = {
        "plain.jpg": dict(format="JPEG", quality=90),
        "progressive.jpg": dict(format="JPEG", progressive=True),
        "exif.jpg": dict(format="JPEG", exif=exif),
        "icc.jpg": dict(format="JPEG", icc_profile=b"\0" * 70000),  # several APP2 segments, past the first read
        "rgba.png": dict(format="PNG"),
        "pic.gif": dict(format="GIF"),
        "pic.bmp": dict(format="BMP"),
        "pic.webp": dict(format="WEBP"),
        "pic.tiff": dict(format="TIFF"),
    }
    for name, kw in cases.items():
        (img.convert("RGBA") if name.endswith("png") else img).save(tmp_path / name, **kw)
        with Image.open(tmp_path / name) as im:
            assert header_size(tmp_path / name) == im.size == (53, 37), name
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        (tmp_path / "hopper.jpg").write_bytes(f.read())
    assert header_size(tmp_path / "hopper.jpg") == (512, 600)
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    for name in ("garbage.jpg", "text.png"):
        with pytest.raises(OSError):
            header_size(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        header_size(tmp_path / "missing.png")
