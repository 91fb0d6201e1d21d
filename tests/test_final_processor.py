"""final/'s processor computes the training pixels: a real run trains on a photograph, then final/'s processor (as our
loaders and plain transformers load it) turns the same photograph into the pixel_values the training batches held.

Before, final/ shipped transformers' torchvision image processor while training resized with PIL: on a 448 tile of
this photograph the two are 0.22 apart after normalisation. The photograph is matplotlib's grace_hopper.jpg (a
dependency); the training pixels come from the run's own dataset and collator, built from the run's config.yaml.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from matplotlib import cbook
from omegaconf import OmegaConf
from PIL import Image

from conftest import run_launch
from data_media import conv, write_jsonl

CROP = (0, 100, 512, 250)  # a wide crop: several tiles plus the thumbnail, downscaled to the tiny model's 64 px


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("final_processor")
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        Image.open(f).convert("RGB").crop(CROP).save(tmp / "photo.png")
    write_jsonl(tmp / "d.jsonl", [{"image": "photo.png", "conversations": conv("<image>\nWho?", "A scientist.")}] * 2)
    (tmp / "meta.json").write_text(json.dumps({"d": {"root": str(tmp), "annotation": str(tmp / "d.jsonl")}}))
    out = tmp / "outputs"
    res = run_launch([f"data.meta_path={tmp / 'meta.json'}", "data.generate_demo=false", f"paths.output_dir={out}",
                      f"paths.cache_dir={tmp / 'cache'}", "run_name=photo", "trainer.max_steps=1",
                      "trainer.save_strategy=no", "trainer.save_final=true"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp, out / "default" / "photo"


def _training_pixels(tmp, run_dir):
    """pixel_values as training fed them: the run's config, its dataset and collator."""
    from internvl_exp.data.collator import Collator
    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    cfg = OmegaConf.create(yaml.safe_load((run_dir / "config.yaml").read_text()))
    tokenizer = load_tiny_tokenizer()
    dataset, _ = build_from_config(cfg, tokenizer, cfg.resolved.tokens_per_tile)
    return Collator(tokenizer.pad_token_id)([dataset[0]])["pixel_values"].float().numpy()


def test_final_processor_gives_the_training_pixels_on_a_photograph(run):
    from transformers import AutoImageProcessor

    from internvl_exp.inference.load import load_for_inference

    tmp, run_dir = run
    trained = _training_pixels(tmp, run_dir)
    assert trained.shape[0] > 2  # a grid and its thumbnail
    photo = Image.open(tmp / "photo.png").convert("RGB")
    loaded = load_for_inference(str(run_dir), device="cpu").processor  # what tools.predict / tools.chat use
    plain = AutoImageProcessor.from_pretrained(run_dir / "final", backend="pil")  # plain transformers, as documented
    for processor in (loaded.image_processor, plain):
        ours = processor(images=[photo], return_tensors="np")["pixel_values"]
        assert ours.shape == trained.shape
        assert np.abs(ours - trained).max() <= 1e-5  # float rounding of the normalisation only
    record = json.loads((run_dir / "final" / "processor_config.json").read_text())["image_processor"]
    assert record["resize_backend"] == "pil"
    # transformers' default backend is a different kernel: the difference is real and documented.
    default = AutoImageProcessor.from_pretrained(run_dir / "final")(images=[photo], return_tensors="np")["pixel_values"]
    assert np.abs(default - trained).max() > 0.01


@pytest.mark.parametrize("backend", ["pil", "torch"])
def test_the_saved_processor_follows_data_resize_backend(tmp_path, backend):
    from internvl_exp.data.images import image_to_tiles
    from internvl_exp.models.processor import from_pretrained_dir, make_processor
    from internvl_exp.models.tiny_tokenizer import load_tiny_tokenizer

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(f).convert("RGB")
    make_processor(load_tiny_tokenizer(), image_size=448, min_patches=1, max_patches=6, image_seq_length=4,
                   template="internvl2_5", resize_backend=backend).save_pretrained(tmp_path)
    processor = from_pretrained_dir(tmp_path).image_processor
    pixels = processor(images=[photo], return_tensors="np")["pixel_values"]
    trained = image_to_tiles(photo, 1, 6, 448, True, "imagenet", backend)
    assert np.abs(pixels - trained).max() <= 1e-5
