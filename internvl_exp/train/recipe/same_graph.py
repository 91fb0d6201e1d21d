"""Every rank runs the same graph: a text-only batch still goes through the vision tower and the projector.

A batch without images sends no `pixel_values`, so transformers' InternVL skips the vision path, and on that
rank the trainable projector (and any trainable ViT parameter) gets no gradient while another rank's does:
DDP (with find_unused_parameters off, as under activation checkpointing) waits for it forever, and ZeRO-3
never gathers those weights on that rank. InternVL's own code feeds a dummy image with `image_flags=0`;
transformers' forward refuses pixel_values without matching placeholder tokens, so instead a forward hook
runs one black tile through `get_image_features` and adds `0 * sum(features)` to the loss (or, when the
trainer computes the loss itself from the logits, to the logits): the loss value is
bit-identical (x + 0.0 == x for finite x) and every trainable vision/projector parameter gets a zero gradient.

The black tile runs in a forward pre-hook of the language model (inside the outer forward, so after
DeepSpeed's own start-of-forward hook on the outer module), i.e. before the LLM, where an image batch runs its vision tower:
under ZeRO-3 every rank then gathers the vision weights at the same point of its forward (gathers are
collectives; a rank gathering them after the LLM while another gathers them before would deadlock). A forward hook on
the outer module adds the stashed term to the loss.

The hooks sit on the outermost module the Trainer calls (a PEFT wrapper calls the inner forward directly,
bypassing hooks there), so it runs inside DDP's and DeepSpeed's forward.
"""

from __future__ import annotations

from typing import Any

import torch

from internvl_exp.dist import world_size


def _vision_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module that owns vision_tower + multi_modal_projector (transformers' InternVLModel)."""
    for module in model.modules():
        if hasattr(module, "vision_tower") and hasattr(module, "multi_modal_projector") and hasattr(
            module, "get_image_features"
        ):
            return module
    raise TypeError(f"{type(model).__name__} has no vision_tower/multi_modal_projector to keep in the graph")


def dummy_vision_term(vision_model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """0 * (sum of the projector's output for one black tile): zero, but connected to every vision weight."""
    config = vision_model.config
    size = config.vision_config.image_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    tile = torch.zeros(1, 3, size, size, device=device)
    features = vision_model.get_image_features(
        pixel_values=tile,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        return_dict=True,
    ).pooler_output
    return features.sum() * 0.0


def keep_vision_in_graph(model: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Install the hooks (the module the Trainer will call, and its language model); returns their handles."""
    vision_model = _vision_model(model)
    wanted: list[bool] = [False]
    pending: list[torch.Tensor] = []

    def before(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        pending.clear()  # a forward that raised leaves nothing behind for the next one
        # In eval too when there are several processes: ZeRO-3 gathers the vision weights on every rank.
        wanted[0] = kwargs.get("pixel_values") is None and (module.training or world_size() > 1)

    def before_llm(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        # Inside the outer forward (after DeepSpeed's own start-of-forward hook), where images would be encoded.
        if wanted[0]:
            wanted[0] = False
            embeds = kwargs.get("inputs_embeds")
            device = embeds.device if embeds is not None else next(module.parameters()).device
            pending.append(dummy_vision_term(vision_model, device))

    def after(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        wanted[0] = False
        if not pending:
            return output
        term = pending.pop()
        loss = output.get("loss") if hasattr(output, "get") else None
        if loss is not None:
            output["loss"] = loss + term.to(loss.dtype)
        else:  # the trainer computes the (weighted) loss from the logits itself (train/recipe/loss.py)
            output["logits"] = output["logits"] + term.to(output["logits"].dtype)
        return output

    return [model.register_forward_pre_hook(before, with_kwargs=True),
            vision_model.language_model.register_forward_pre_hook(before_llm, with_kwargs=True),
            model.register_forward_hook(after, with_kwargs=True)]
