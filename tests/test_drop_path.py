"""Drop-path on the ViT (timm DropPath on each layer's residual branches): linear schedule, trainable layers
only by default, active only in training, consistent under activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from conftest import compose
from training_helpers import build

FOUR = ["model.arch.vision.num_hidden_layers=4"]


def _cfg(overrides, tmp_path, validate=True):
    from internvl_exp.config.validate import validate as check

    cfg = compose(FOUR + overrides, tmp_path)
    if validate:
        check(cfg)
    return cfg


def _layers_with_drop_path(model) -> dict[int, float]:
    from internvl_exp.train.tuning.drop_path import vision_drop_path_rates

    rates = vision_drop_path_rates(model)
    by_layer: dict[int, float] = {}
    for name, p in rates.items():
        idx = int(name.split("encoder.layer.")[1].split(".")[0])
        assert name.endswith((".attention.drop_path", ".mlp.drop_path")), name
        by_layer.setdefault(idx, p)
        assert by_layer[idx] == p  # both branches of a layer share its rate
    return by_layer


def _pixels(n=8):
    g = torch.Generator().manual_seed(123)
    return torch.randn(n, 3, 64, 64, generator=g)


def test_rate_per_layer_follows_the_linear_schedule(tokenizer, tmp_path):
    from internvl_exp.train.tuning.drop_path import linear_drop_path_rates

    assert linear_drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    cfg = _cfg(["freeze=full", "model.drop_path_rate=0.3"], tmp_path)
    _, setup = build(cfg, tokenizer)
    assert setup.drop_path_rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    # layer 0 has rate 0: no module at all
    assert _layers_with_drop_path(setup.model) == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})


def test_only_trainable_layers_get_drop_path_unless_configured(tokenizer, tmp_path):
    cfg = _cfg(["freeze=vit_last_n", "freeze.vit_last_n=2", "model.drop_path_rate=0.3"], tmp_path)
    _, setup = build(cfg, tokenizer)
    assert _layers_with_drop_path(setup.model) == pytest.approx({2: 0.2, 3: 0.3})

    cfg = _cfg(["freeze=vision", "model.drop_path_rate=0.3"], tmp_path)
    _, setup = build(cfg, tokenizer)
    assert _layers_with_drop_path(setup.model) == {}

    cfg = _cfg(["freeze=vit_last_n", "freeze.vit_last_n=2", "model.drop_path_rate=0.3",
                "model.drop_path_on_frozen=true", "freeze.frozen_mode=train"], tmp_path)
    _, setup = build(cfg, tokenizer)
    assert _layers_with_drop_path(setup.model) == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_train_and_eval_outputs_differ_only_with_drop_path(rate, tokenizer, tmp_path):
    cfg = _cfg(["freeze=full", f"model.drop_path_rate={rate}"], tmp_path)
    _, setup = build(cfg, tokenizer)
    _, plain = build(_cfg(["freeze=full"], tmp_path), tokenizer)  # same seed: same weights, no drop-path
    vision, plain_vision = setup.model.model.vision_tower, plain.model.model.vision_tower
    pixels = _pixels()
    with torch.no_grad():
        vision.eval(), plain_vision.eval()
        eval_out = vision(pixel_values=pixels).last_hidden_state
        assert torch.equal(eval_out, plain_vision(pixel_values=pixels).last_hidden_state)  # inert in eval
        vision.train()
        torch.manual_seed(0)
        train_out = vision(pixel_values=pixels).last_hidden_state
    if rate == 0.0:
        assert torch.equal(train_out, eval_out)
    else:
        # some tiles lost a branch in some layer: those differ, the output shape does not
        assert train_out.shape == eval_out.shape and not torch.allclose(train_out, eval_out)


@pytest.mark.parametrize("frozen_mode", ["eval", "train"])
def test_frozen_layers_are_deterministic_in_eval_mode(frozen_mode, tokenizer, tmp_path):
    """drop_path_on_frozen with frozen_mode=eval is rejected by validation because the frozen ViT runs in eval
    mode and its drop-path would never fire; building it anyway shows exactly that."""
    cfg = _cfg(["freeze=vision", "model.drop_path_rate=0.3", "model.drop_path_on_frozen=true",
                f"freeze.frozen_mode={frozen_mode}"], tmp_path, validate=frozen_mode == "train")
    _, setup = build(cfg, tokenizer)
    model = setup.model
    pixels = _pixels()
    model.train()  # what the Trainer does before each step
    with torch.no_grad():
        torch.manual_seed(0)
        a = model.model.vision_tower(pixel_values=pixels).last_hidden_state
        torch.manual_seed(1)
        b = model.model.vision_tower(pixel_values=pixels).last_hidden_state
    assert torch.equal(a, b) == (frozen_mode == "eval")


def test_drop_path_masks_are_replayed_under_activation_checkpointing(tokenizer, tmp_path):
    """Checkpointed layers recompute their forward in backward: the drop-path mask must be the same, so the
    gradients match a run without checkpointing."""
    cfg = _cfg(["freeze=full", "model.drop_path_rate=0.3"], tmp_path)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        _, setup = build(cfg, tokenizer)
        vision = setup.model.model.vision_tower
        if checkpointing:
            setup.model.activation_checkpointing_enable()
        vision.train()
        torch.manual_seed(0)
        vision(pixel_values=_pixels()).last_hidden_state.square().mean().backward()
        return {n: p.grad.clone() for n, p in vision.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and plain
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6), n
