"""Per-sequence log-probs of the chosen and the rejected answers from one forward of a transformers InternVL model.

A sequence's log-prob is the sum, over its supervised positions (label != -100), of log p(label_t | tokens < t),
in float32, with the usual one-position shift; the count of those positions comes with it (the NLL term and
length-normalised losses need it). This is trl's `get_batch_logps`, which InternVL's MPO uses.

`sequence_logps_from_logits` materialises the full [rows, length, vocabulary] logits: fine for the tiny test
models and short sequences, the first thing to replace (by a chunked linear + cross-entropy over the hidden
states) for real vocabularies at 8k+ tokens.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from internvl_exp.data.templates import IGNORE_INDEX


def sequence_logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs [rows] float32, supervised token counts [rows] long) of `labels` under `logits`.

    Position t's logits predict labels[t + 1]; positions labelled -100 (prompt, image tokens, padding) count 0.
    """
    target = labels[:, 1:].to(logits.device)
    logits = logits[:, :-1].float()
    # cross_entropy is -log_softmax at the target, computed without keeping a second [rows, L, V] tensor.
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX,
                          reduction="none").view(target.shape)
    supervised = target != IGNORE_INDEX
    return -(nll * supervised).sum(-1), supervised.sum(-1)


def _image_features(model: Any, pixel_values: torch.Tensor):
    """The projected image features of every tile (the model's own vision tower, layer and projector)."""
    cfg = model.config
    return model.get_image_features(pixel_values=pixel_values, vision_feature_layer=cfg.vision_feature_layer,
                                    vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                                    return_dict=True)


def pair_logps(model: Any, batch: Mapping[str, Any], encode_images_once: bool = True) -> dict[str, torch.Tensor]:
    """Summed log-probs and supervised counts of the 2B rows of `collate_pairs`' batch, split into the halves.

    Returns {"chosen_logps", "rejected_logps", "chosen_counts", "rejected_counts"}, each [B]. The pixels are in
    the batch once: with `encode_images_once` the vision tower runs once and both halves get the features
    (InternVL encodes every image twice); otherwise the tiles are repeated and the model's own forward encodes
    them (the plain path, e.g. where only a wrapped model's forward may be called).
    """
    b = int(batch["num_pairs"])
    input_ids = batch["input_ids"]
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": batch["attention_mask"], "use_cache": False}
    pixel_values = batch.get("pixel_values")
    if pixel_values is not None:
        if encode_images_once:
            image = _image_features(model, pixel_values)
            # Image tokens are filled in row-major order: the chosen rows' images, then the rejected rows'.
            image.pooler_output = torch.cat([image.pooler_output, image.pooler_output])
            kwargs["mm_encoder_outputs"] = {"image": image}
        else:
            kwargs["pixel_values"] = torch.cat([pixel_values, pixel_values])
    logits = model(**kwargs).logits
    sums, counts = sequence_logps_from_logits(logits, batch["labels"])
    if sums.shape[0] != 2 * b:
        raise ValueError(f"the batch has {sums.shape[0]} rows for {b} pairs; expected [chosen; rejected] = {2 * b}")
    return {"chosen_logps": sums[:b], "rejected_logps": sums[b:], "chosen_counts": counts[:b],
            "rejected_counts": counts[b:]}
