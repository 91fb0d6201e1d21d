"""Own data never evaluates on the demo: data.eval.meta_path of conf/data/demo.yaml is the demo's eval split only
while the training data is the demo's own (a meta JSON inside paths.demo_data_dir); a user's data.meta_path makes
it null, so eval comes from the user's own settings or is off, and the header says which."""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image

from conftest import compose, run_launch
from data_media import conv, write_jsonl


def _own_data(tmp_path):
    """Two datasets of the user's own (one image carries an EXIF rotation tag)."""
    mine = tmp_path / "MINE"
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    mine.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(mine / "a.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(mine / "b.png")
    write_jsonl(mine / "pics.jsonl", [{"image": "a.jpg", "conversations": conv("<image>\nWhat?", "Noise.")},
                                      {"image": "b.png", "conversations": conv("<image>\nAnd this?", "Noise too.")}])
    write_jsonl(mine / "chat.jsonl", [{"conversations": conv(f"Say {i}.", f"{i}.")} for i in range(6)])
    (mine / "meta.json").write_text(json.dumps({"pics": {"root": str(mine), "annotation": "pics.jsonl"},
                                                "chat": {"root": str(mine), "annotation": "chat.jsonl"}}))
    return mine / "meta.json"


def test_the_demo_eval_goes_with_the_demo_data_only(tmp_path):
    demo = tmp_path / "demo"
    own = [f"paths.demo_data_dir={demo}", f"data.meta_path={tmp_path / 'MINE' / 'meta.json'}", "data.generate_demo=false"]
    assert compose([f"paths.demo_data_dir={demo}"]).data.eval.meta_path == f"{demo}/eval/meta.json"
    assert compose([f"paths.demo_data_dir={demo}", "data=demo_large"]).data.eval.meta_path == f"{demo}/eval/meta.json"
    assert compose([f"paths.demo_data_dir={demo}", "data=demo_eval"]).data.eval.meta_path is None
    # Training on the eval split itself never evaluates on it.
    assert compose([f"paths.demo_data_dir={demo}", f"data.meta_path={demo}/eval/meta.json"]).data.eval.meta_path is None
    assert compose(own).data.eval.meta_path is None
    # A demo path that only starts like the demo folder is not inside it.
    assert compose([f"paths.demo_data_dir={demo}", f"data.meta_path={demo}_copy/meta.json"]).data.eval.meta_path is None
    # What the user sets is kept: their own eval, or the demo's eval asked for by name.
    assert compose(own + ["data.eval.meta_path=/x/eval.json"]).data.eval.meta_path == "/x/eval.json"
    assert compose(own + [f"data.eval.meta_path={demo}/eval/meta.json"]).data.eval.meta_path == f"{demo}/eval/meta.json"
    # The held-out split with own data no longer collides with the demo's eval.
    from internvl_exp.config.validate import validate

    validate(compose(own + ["data.eval_fraction=0.2"], tmp_path))


def test_own_data_trains_without_demo_eval_and_the_header_says_so(tmp_path):
    meta = _own_data(tmp_path)
    empty_demo = tmp_path / "no_demo_here"  # no demo data on disk: nothing may need it
    out = tmp_path / "outputs"
    res = run_launch([f"data.meta_path={meta}", "data.generate_demo=false", f"paths.demo_data_dir={empty_demo}",
                      f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", "run_name=own",
                      "trainer.max_steps=2", "trainer.save_strategy=no", "trainer.save_final=false"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert "eval data:" not in log
    assert yaml.safe_load((out / "default" / "own" / "config.yaml").read_text())["data"]["eval"]["meta_path"] is None
    assert (f"  data      data=demo: {meta}; eval off (no data.eval.meta_path, data.eval.datasets or "
            "data.eval_fraction set)") in log
    assert "  exif      1 image(s) with an EXIF rotation tag, used as stored" in log
    metrics = json.loads((out / "default" / "own" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["eval_data"] is None
    assert metrics["data"]["per_dataset"] == {"pics": 2, "chat": 6}
    assert metrics["data"]["images_with_exif_rotation"] == 1
    assert not empty_demo.exists()


def test_data_check_names_the_data_and_the_eval(tmp_path, capsys, demo_dir):
    from internvl_exp.tools.data_check import main

    meta = _own_data(tmp_path)
    common = [f"paths.demo_data_dir={demo_dir}", f"paths.cache_dir={tmp_path / 'cache'}"]
    assert main(common + [f"data.meta_path={meta}", "data.generate_demo=false"]) == 0
    text = capsys.readouterr().out
    assert f"data=demo: {meta}; eval off" in text
    assert main(common) == 0
    assert f"data=demo: {demo_dir}/meta.json; eval {demo_dir}/eval/meta.json" in capsys.readouterr().out
    assert main(common + [f"data.meta_path={meta}", "data.generate_demo=false", "data.eval_fraction=0.25"]) == 0
    assert "eval a held-out 0.25 of the training lines (data.eval_fraction)" in capsys.readouterr().out
