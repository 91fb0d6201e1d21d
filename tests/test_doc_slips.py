"""Statements of the docs and help texts checked against the code they describe: the README's group table lists
every option (oracle: the files of conf/), `chat --help` names its argument as parsed and its example image
exists where the demo puts it, and a model=local geometry refusal names the keys to set."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF, ROOT, compose


def test_readme_group_table_lists_every_option():
    rows = re.findall(r"^\| `(\w+)` \| (.*?) \|", (ROOT / "README.md").read_text(), re.M)
    groups = {name: cell for name, cell in rows if (CONF / name).is_dir()}
    assert set(groups) == {p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"}
    for name, cell in groups.items():
        listed = {o for o in re.findall(r"`(\w+)`", cell) if (CONF / name / f"{o}.yaml").exists()}
        shipped = {p.stem for p in (CONF / name).glob("*.yaml")}
        if "…" not in cell:  # a complete list
            assert listed == shipped, (name, shipped - listed)
        assert listed, name


def test_chat_help_names_its_argument_and_a_real_example_image(tmp_path):
    from internvl_exp.data.demo import generate_demo_data

    res = subprocess.run([sys.executable, "-m", "internvl_exp.tools.chat", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0
    assert "TARGET" not in res.stdout and "RUN_DIR_OR_MODEL is one of" in res.stdout
    image = Path(re.search(r"--image (\S+\.png)", res.stdout).group(1))
    demo_dir = Path(compose().paths.demo_data_dir).relative_to(ROOT)  # where the demo generates its data
    generate_demo_data(tmp_path / "demo")
    assert (tmp_path / "demo" / image.relative_to(demo_dir)).is_file(), image
    run = re.search(r"tools\.chat (outputs/\S+) --image", res.stdout).group(1)
    assert run == "outputs/default/demo" and "run_name=demo" in res.stdout  # the run the examples assume


def test_local_geometry_refusal_names_the_keys_to_set(tmp_path):
    from internvl_exp.models.resolve import CheckpointError, resolve_weights

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    config = {"model_type": "internvl", "vision_config": {"image_size": [64, 64], "patch_size": [8, 8]},
              "text_config": {"model_type": "qwen2"}, "downsample_ratio": 0.5}
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "model.safetensors").write_bytes(b"")
    cfg = compose(["model=local", f"model.path={ckpt}", "model.template=internvl2_5"], tmp_path)
    with pytest.raises(CheckpointError) as e:
        resolve_weights(cfg)
    message = str(e.value)
    assert message.endswith("set model.image_size=64 model.patch_size=8 to match it"), message
    assert "model=local model.path=DIR" not in message
    cfg = compose(["model=local", f"model.path={ckpt}", "model.template=internvl2_5", "model.image_size=64",
                   "model.patch_size=8"], tmp_path)
    assert resolve_weights(cfg) is not None  # the advice, followed, is accepted


def test_pyproject_license_is_an_spdx_string_without_setuptools_deprecation(tmp_path):
    """What an install does with pyproject.toml (setuptools applies it to a Distribution): no license banner."""
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message)[:200] for w in caught]
