"""A text-only batch still runs the vision tower and projector (train/recipe/same_graph.py): the loss is bit-identical
to the model without the hook, every trainable vision/projector weight gets a gradient (exactly zero), and the
LLM's gradients are unchanged."""

from __future__ import annotations

import torch

from conftest import compose


def test_text_only_batch_keeps_vision_in_the_graph_with_zero_contribution(tmp_path, tokenizer, demo_dir):
    from internvl_exp.data.collator import Collator
    from internvl_exp.data.from_config import build_from_config
    from internvl_exp.models.loading import load_model
    from internvl_exp.models.registry import get_family
    from internvl_exp.train.recipe.same_graph import keep_vision_in_graph

    cfg = compose(["data=mix"], tmp_path, demo_dir)
    dataset, _ = build_from_config(cfg, tokenizer, cfg.resolved.tokens_per_tile)
    text_only = [i for i, s in enumerate(dataset.samples) if not sum(s.num_tiles)][:2]
    assert len(text_only) == 2
    batch = Collator(tokenizer.pad_token_id)([dataset[i] for i in text_only])
    assert "pixel_values" not in batch

    torch.manual_seed(0)
    model = load_model(cfg.model, tokenizer)
    model.train()  # everything trainable (freeze=full's effect, without the freezing code under test elsewhere)
    family = get_family(cfg.model.family)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach().clone(), {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain_grads = loss_and_grads()
    vision_names = [n for n, _ in model.named_parameters() if family.part_of(n) in ("vision", "projector")]
    assert vision_names and all(plain_grads[n] is None for n in vision_names)  # the hazard: not in the graph

    handles = keep_vision_in_graph(model)
    hooked_loss, hooked_grads = loss_and_grads()
    model.eval()  # outside training the hook leaves the forward alone
    with torch.no_grad():
        assert torch.equal(model(**batch).loss, plain_loss)
    for handle in handles:
        handle.remove()

    assert torch.equal(hooked_loss, plain_loss), (hooked_loss, plain_loss)  # bit-identical, tolerance 0
    for name in vision_names:
        grad = hooked_grads[name]
        assert grad is not None, f"{name} got no gradient"
        assert torch.count_nonzero(grad) == 0, name
    for name, grad in plain_grads.items():
        if grad is not None:
            assert torch.equal(hooked_grads[name], grad), name
