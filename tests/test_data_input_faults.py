"""Inputs that used to crash or go unexplained: a lone UTF-16 surrogate in a JSON line, and a file that only a full
decode finds broken (data_check --decode must say why, as training does)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_media import conv, write_jsonl
from internvl_exp.tools.data_check import main

# Valid JSON (json.loads accepts it) whose string is not valid Unicode: no tokenizer can take it.
SURROGATE_LINE = '{"conversations": [{"from": "human", "value": "hi \\ud800"}, {"from": "gpt", "value": "ok"}]}'
PAIRED_LINE = '{"conversations": [{"from": "human", "value": "smile \\ud83d\\ude00"}, {"from": "gpt", "value": "ok"}]}'


def _surrogate_meta(tmp_path):
    ann = tmp_path / "s.jsonl"
    ann.write_text("\n".join([json.dumps({"conversations": conv("Hi", "Hello.")}), SURROGATE_LINE, PAIRED_LINE]) + "\n")
    assert json.loads(SURROGATE_LINE)["conversations"][0]["value"] == "hi \ud800"  # the oracle: it is valid JSON
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"s": {"root": ".", "annotation": "s.jsonl"}}))
    return meta, ann


@pytest.mark.parametrize("policy,status", [("strict", 1), ("skip", 0)])
def test_a_lone_surrogate_is_a_file_line_problem_in_data_check(tmp_path, capsys, demo_dir, policy, status):
    meta, ann = _surrogate_meta(tmp_path)
    out = tmp_path / "r.json"
    args = [f"data.meta_path={meta}", "data.generate_demo=false", f"paths.demo_data_dir={demo_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"data.on_error={policy}", "--json", str(out)]
    assert main(args) == status
    text = capsys.readouterr().out
    assert "Traceback" not in text and "TypeError" not in text
    assert f"{ann}:2: invalid_json: conversations[0].value holds a lone UTF-16 surrogate" in text
    report = json.loads(out.read_text())
    assert [p["where"] for p in report["problems"]] == [f"{ann}:2"]  # the paired escape (an emoji) is fine
    assert report["datasets"][0]["samples"] == 2


def test_a_lone_surrogate_under_the_training_scan(tmp_path, tokenizer):
    from internvl_exp.data.dataset import DataError, ImageSettings, build_dataset
    from internvl_exp.data.sources import load_entries

    _, ann = _surrogate_meta(tmp_path)
    entries = load_entries(None, {"s": {"annotation": str(ann), "root": str(tmp_path)}})
    s = ImageSettings(tile_size=64, tokens_per_tile=4)
    with pytest.raises(DataError, match=f"{ann}:2: invalid_json: .*lone UTF-16 surrogate"):
        build_dataset(entries, tokenizer, "internvl2_5", s, 512, scan_workers=2)
    dataset, report = build_dataset(entries, tokenizer, "internvl2_5", s, 512, on_error="skip", scan_workers=2)
    assert len(dataset) == 2 and dict(report.skipped) == {"invalid_json": 1}
    assert "\U0001F600" in tokenizer.decode(dataset[1]["input_ids"])  # the paired one is kept, as the emoji


def test_decode_failures_say_why(tmp_path, capsys, demo_dir):
    path = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])  # header intact, pixels cut off
    with pytest.raises(OSError) as decoded:  # the oracle: what PIL itself says about this file
        Image.open(path).load()
    write_jsonl(tmp_path / "d.jsonl", [{"image": "trunc.png", "conversations": conv("Q?", "A.")},
                                       {"conversations": conv("Hi", "Hello.")}])
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"d": {"root": ".", "annotation": "d.jsonl"}}))
    out = tmp_path / "r.json"
    args = [f"data.meta_path={meta}", "data.generate_demo=false", f"paths.demo_data_dir={demo_dir}", "--decode",
            "--json", str(out)]
    assert main(args) == 1
    text = capsys.readouterr().out
    line = f"{tmp_path / 'd.jsonl'}:1: corrupt_media: {decoded.value}"
    assert "truncated" in str(decoded.value) and line in text
    assert json.loads(out.read_text())["load_failures"] == [line]


# --- images altered silently: 16-bit PNGs, EXIF orientation ------------------------------------------------

def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _settings(**kw):
    from internvl_exp.data.dataset import ImageSettings

    return ImageSettings(tile_size=64, tokens_per_tile=4, max_dynamic_patch=2, **kw)


def _one_image_dataset(tmp_path, tokenizer, name: str, **kw):
    from internvl_exp.data.dataset import build_dataset
    from internvl_exp.data.sources import load_entries

    write_jsonl(tmp_path / f"{name}.jsonl", [{"image": name, "conversations": conv("<image>\nWhat?", "A.")}])
    entries = load_entries(None, {"d": {"annotation": str(tmp_path / f"{name}.jsonl"), "root": str(tmp_path)}})
    return build_dataset(entries, tokenizer, "internvl2_5", _settings(**kw), 4096)


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path, tokenizer):
    v = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)  # the whole 16-bit range
    Image.fromarray(v).save(tmp_path / "g16.png")
    reread = Image.open(tmp_path / "g16.png")
    assert reread.mode == "I;16" and np.array_equal(np.asarray(reread), v)  # a real 16-bit file
    dataset, _ = _one_image_dataset(tmp_path, tokenizer, "g16.png")
    tiles = dataset[0]["pixel_tiles"].numpy()
    assert tiles.shape == (1, 3, 64, 64)  # one tile of the image's own size: no resize in between
    expected = np.round(v / 257).astype(np.uint8)  # the documented rule (65535 -> 255)
    for channel in tiles[0]:
        assert np.array_equal(channel, expected)
    assert (tiles == 255).mean() < 0.01  # Pillow's convert("RGB") made 99.6% of it white


def test_a_16_bit_png_as_a_video_frame_and_at_inference(tmp_path):
    from internvl_exp.data.video import load_frames, probe_video
    from internvl_exp.inference.generate import open_images

    v = (np.arange(32 * 32, dtype=np.uint32) * 64).astype(np.uint16).reshape(32, 32)
    (tmp_path / "clip").mkdir()
    Image.fromarray(v).save(tmp_path / "clip" / "frame_1.png")
    expected = np.round(v / 257).astype(np.uint8)
    (frame,) = load_frames(tmp_path / "clip", "clip/", probe_video(tmp_path / "clip", "clip/", None), [0])
    (image,) = open_images([tmp_path / "clip" / "frame_1.png"])
    for im in (frame, image):
        assert im.mode == "RGB" and np.array_equal(np.asarray(im)[..., 1], expected)


def test_exif_orientation_is_read_from_the_header_as_pil_reads_it(tmp_path):
    from internvl_exp.data.image_header import header_info

    rgb = Image.new("RGB", (40, 24), (10, 200, 30))
    files = {"r6.jpg": 6, "r8.png": 8, "r3.webp": 3, "plain.jpg": None, "one.jpg": 1}
    for name, orientation in files.items():
        rgb.save(tmp_path / name, **({} if orientation is None else {"exif": _exif(orientation)}))
    # A PNG whose eXIf chunk comes after a large (incompressible) ICC profile: past the first bytes read.
    rgb.save(tmp_path / "icc.png", exif=_exif(5), icc_profile=np.random.default_rng(2).bytes(3000))
    files["icc.png"] = 5
    for name in files:
        with Image.open(tmp_path / name) as im:  # the oracle: PIL's own EXIF reader
            assert header_info(tmp_path / name) == ((40, 24), im.getexif().get(0x0112, 1)), name


def test_exif_rotation_is_counted_and_applied_only_when_asked(tmp_path, tokenizer, capsys, demo_dir):
    stored = np.random.default_rng(1).integers(0, 256, (64, 128, 3), dtype=np.uint8)  # 128 wide, 64 high
    Image.fromarray(stored).save(tmp_path / "r.png", exif=_exif(6))  # 6: a viewer turns it 90 degrees clockwise
    plain, report = _one_image_dataset(tmp_path, tokenizer, "r.png")
    assert report.exif_rotated == 1 and report.as_dict()["images_with_exif_rotation"] == 1
    tiles = plain[0]["pixel_tiles"].numpy()  # default: as stored (InternVL's pixels), a 2x1 grid + thumbnail
    assert np.array_equal(tiles[0], stored[:, :64].transpose(2, 0, 1))
    assert np.array_equal(tiles[1], stored[:, 64:].transpose(2, 0, 1))

    turned, report = _one_image_dataset(tmp_path, tokenizer, "r.png", exif_transpose=True)
    upright = np.rot90(stored, k=-1)  # 64 wide, 128 high: a 1x2 grid + thumbnail
    tiles = turned[0]["pixel_tiles"].numpy()
    assert np.array_equal(tiles[0], upright[:64].transpose(2, 0, 1))
    assert np.array_equal(tiles[1], upright[64:].transpose(2, 0, 1))
    assert report.exif_rotated == 1 and "turned upright on load" in report.exif_note()

    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"d": {"root": ".", "annotation": "r.png.jsonl"}}))
    args = [f"data.meta_path={meta}", "data.generate_demo=false", f"paths.demo_data_dir={demo_dir}",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0
    assert "exif: 1 image(s) with an EXIF rotation tag, used as stored" in capsys.readouterr().out
    assert main(args + ["data.exif_transpose=true"]) == 0
    assert "exif: 1 image(s) with an EXIF rotation tag, turned upright on load" in capsys.readouterr().out
