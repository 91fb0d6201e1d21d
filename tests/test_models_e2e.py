"""A real original-layout checkpoint (OpenGVLab's own code produced it: tests/fixtures/original_layout) end to
end: launch.py converts it on first use, trains it, and its final/ answers an `<image>` prompt through the saved
processor's chat template, with the prompt text the training template renders."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import fixture, run_launch

pytestmark = pytest.mark.slow  # launch.py converts, trains and generates in a subprocess

GOLDEN = fixture("original_layout", "qwen2_vit300m")


@pytest.fixture(scope="module")
def converted_run(tmp_path_factory, demo_dir) -> Path:
    tmp = tmp_path_factory.mktemp("converted_run")
    res = run_launch([
        "model=local", f"model.path={GOLDEN}", "model.template=internvl2_5", "model.image_size=56",
        "model.dtype=float32", "trainer.max_steps=4", "trainer.logging_steps=2",
        f"paths.output_dir={tmp / 'out'}", f"paths.cache_dir={tmp / 'cache'}", f"paths.demo_data_dir={demo_dir}",
        "run_name=converted",
    ])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert list((tmp / "cache" / "converted").iterdir()), "the original checkpoint was converted into the cache"
    return tmp / "out" / "default" / "converted"


def test_a_converted_original_trains_and_its_final_answers_an_image_prompt(converted_run):
    import json

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from internvl_exp.data.templates import get_template

    metrics = json.loads((converted_run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 4
    final = converted_run / "final"
    model = AutoModelForImageTextToText.from_pretrained(str(final)).eval()
    processor = AutoProcessor.from_pretrained(str(final))

    question = "<image>\nWhat colour is the shape?"
    prompt = processor.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           tokenize=False)
    # Training renders the whole conversation; the generation prompt is all of it up to the answer.
    training_text = get_template("internvl2_5").render([{"from": "human", "value": question},
                                                       {"from": "gpt", "value": "red"}])
    as_trained = prompt.replace("<IMG_CONTEXT>", "<image>")
    assert training_text.startswith(as_trained) and training_text[len(as_trained):].startswith("red<|im_end|>")

    inputs = processor(text=prompt, images=[Image.new("RGB", (112, 56), (200, 30, 30))], return_tensors="pt")
    tiles = inputs["pixel_values"].shape[0]
    assert tiles == 3  # a 2x1 grid plus the thumbnail, at the checkpoint's 56-px tiles
    assert (inputs["input_ids"] == model.config.image_token_id).sum().item() == tiles * 4
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]  # it answered


def test_the_launch_records_the_weights_it_found_for_every_process(converted_run):
    """config.yaml carries the checked checkpoint (resolved.weights_*): the run's processes load it, not look again;
    and the run spec is whole (recipe values, no auto left but the resume policy)."""
    from omegaconf import OmegaConf

    spec = OmegaConf.load(converted_run / "config.yaml")
    assert (spec.resolved.weights_path, spec.resolved.weights_origin) == (str(GOLDEN), "model.path")
    assert spec.trainer.device == "cpu" and spec.model.dtype == "float32"
    assert spec.optimizer.lr == 4e-5 and spec.resolved.origins["optimizer.lr"] == "recipe internvl2_2nd_stage"
    text = (converted_run / "config.yaml").read_text()
    assert [line for line in text.splitlines() if line.endswith(": auto")] == ["resume: auto"]
