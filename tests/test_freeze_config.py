"""Cross-group rules of the freeze / LoRA / drop-path settings: each names the key and what to do."""

from __future__ import annotations

import pytest

from conftest import compose


def _problems(overrides, tmp_path) -> str:
    from internvl_exp.config.validate import config_problems

    return "\n".join(config_problems(compose(overrides, tmp_path)))


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["freeze=lora_llm", "freeze.parts.lm_head=lora"], "freeze.parts.lm_head: lora is only available for vision and llm"),
        (["freeze=full", "freeze.parts.projector=lora"], "freeze.parts.projector: lora is only available"),
        (["freeze=full", "freeze.vit_last_n=1"], "freeze.vit_last_n: unfreezes the last N layers of a frozen ViT"),
        (["freeze=vit_last_n", "freeze.vit_last_n=3"], "freeze.vit_last_n: 3 is more than the model's 2 vision layers"),
        (["freeze=vit_last_n", "freeze.vit_last_n=0"], "freeze.vit_last_n: 0 must be >= 1"),
        (["freeze.embeddings=sometimes"], "freeze.embeddings: 'sometimes' is not frozen, full or null"),
        (["freeze.frozen_mode=random"], "freeze.frozen_mode: 'random' is not eval or train"),
        (["freeze=lora_llm", "freeze.lora.r=0"], "freeze.lora.r: 0 must be >= 1"),
        (["freeze=lora_llm", "freeze.lora.dropout=1.0"], "freeze.lora.dropout: 1.0 must be in [0, 1)"),
        (["freeze=lora_llm", "freeze.lora.vision_targets=[mlp.fc1]"],
         "freeze.lora.vision_targets is set but freeze.parts.vision=frozen"),
        (["freeze=lora_llm", "freeze.lora.llm_targets=[]"], "freeze.lora.llm_targets: empty list"),
        (["model.drop_path_rate=1.0"], "model.drop_path_rate: 1.0 must be in [0, 1)"),
        (["model.drop_path_on_frozen=true"], "set freeze.frozen_mode=train as well"),
    ],
)
def test_rule_names_the_key(overrides, expected, tmp_path):
    assert expected in _problems(overrides, tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [
        ["freeze=mlp_only", "freeze.parts.projector=frozen", "freeze.vit_last_n=1"],  # only ViT top layers train
        ["freeze=mlp_only", "freeze.parts.projector=frozen", "freeze.embeddings=full"],  # only embeddings train
        ["freeze=lora_llm", "freeze.parts.projector=full", "freeze.parts.lm_head=full", "freeze.vit_last_n=2"],
        ["freeze=vision", "model.drop_path_rate=0.1", "model.drop_path_on_frozen=true", "freeze.frozen_mode=train"],
    ],
)
def test_valid_combinations_pass(overrides, tmp_path):
    assert _problems(overrides, tmp_path) == ""


def test_everything_frozen_is_still_rejected(tmp_path):
    assert "every part is frozen" in _problems(["freeze=mlp_only", "freeze.parts.projector=frozen"], tmp_path)
