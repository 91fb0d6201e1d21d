"""Sequence packing: whole planned samples into packs of at most `max_packed_tokens` tokens and `max_tiles` tiles.

The rule (`pack_rows`): the epoch's samples are shuffled (seeded by data.seed and the epoch) and cut into
windows of `buffer_size` samples; each window is packed by **first-fit decreasing**: its samples sorted by
token length (longest first; ties by position), each put into the first open pack with room for both its
tokens and its tiles, else into a new pack. Decisions use only the plan's token lengths and tile counts
(no tokenisation). A sample is never split, so an image span is never cut and no text is dropped; a sample
whose tiles alone exceed `max_tiles` gets a pack of its own (the tile cap bounds the others, never drops).
Inside a pack the samples keep their shuffled order, so their images reach the vision tower in the order of
their `<img>` spans.

The pack stream of a run (`PackedDataset`) is planned up front for every epoch it needs, from the plan alone:
a deterministic function of (data.seed, epoch). The Trainer sees the whole stream as one sequentially read
epoch, so `len()` is exact and so is the scheduler's step count, and HF's batch skipping on resume continues
in the same stream. Ranks read disjoint batches of that one global stream (accelerate shards batches), so
they agree on the step count; the pack count is made a multiple of world size x per-device batch by
splitting the packs with the most samples in two (`even_out`; no sample is repeated or dropped).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from internvl_exp.config.schema import Config
from internvl_exp.data.collator import Collator, pixel_values
from internvl_exp.data.dataset import DataError, LoadFailed
from internvl_exp.data.loss_weights import check_reduction, sample_weight
from internvl_exp.data.templates import IGNORE_INDEX

log = logging.getLogger(__name__)

def pack_rows(lengths: np.ndarray, tiles: np.ndarray, max_tokens: int, max_tiles: int,
              buffer_size: int) -> list[np.ndarray]:
    """Positions (into `lengths`) of each pack: first-fit decreasing over consecutive windows of `buffer_size`.

    Raises ValueError for a sample longer than `max_tokens` (config validation keeps max_seq_length below it)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    tiles = np.asarray(tiles, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > max_tokens:
        raise ValueError(f"a sample has {int(lengths.max())} tokens, more than max_packed_tokens={max_tokens}")
    packs: list[np.ndarray] = []
    for start in range(0, len(lengths), max(1, buffer_size)):
        window = np.arange(start, min(start + buffer_size, len(lengths)))
        order = window[np.argsort(-lengths[window], kind="stable")]
        room_tok: list[int] = []
        room_img: list[int] = []
        members: list[list[int]] = []
        for i in order:
            n, t = int(lengths[i]), int(tiles[i])
            for b in range(len(members)):
                if room_tok[b] >= n and room_img[b] >= t:
                    room_tok[b] -= n
                    room_img[b] -= t
                    members[b].append(int(i))
                    break
            else:
                room_tok.append(max_tokens - n)
                room_img.append(max_tiles - t)  # negative for an oversize sample: nothing else fits there
                members.append([int(i)])
        packs.extend(np.sort(np.asarray(m, dtype=np.int64)) for m in members)
    return packs


def even_out(packs: list[tuple[int, np.ndarray]], multiple: int) -> list[tuple[int, np.ndarray]]:
    """(epoch, positions) packs, made a multiple of `multiple` in number by splitting the packs with the most
    samples in two (each half stays in its epoch and place in the stream).

    Splitting never repeats or drops a sample. When too few packs hold two samples, the first packs of the
    stream are repeated to fill (as torch's DistributedSampler pads) and a warning says how many."""
    packs = list(packs)
    need = (-len(packs)) % multiple
    while need:
        widest = max(range(len(packs)), key=lambda k: (len(packs[k][1]), -k))
        epoch, p = packs[widest]
        if len(p) < 2:
            break
        half = len(p) // 2
        packs[widest:widest + 1] = [(epoch, p[:half]), (epoch, p[half:])]
        need -= 1
    if need:
        log.warning("packing: %d pack(s) repeated so that every process takes the same number of steps", need)
        packs.extend(packs[:need])
    return packs


def sample_tiles(plan: Any) -> np.ndarray:
    """Tiles of every plan row (all its images' tiles, or its video frames), without a Python loop per row."""
    r = plan.rows
    ends = np.concatenate([[0], np.cumsum(np.asarray(plan.tiles, dtype=np.int64))])
    at = np.asarray(r["tiles_at"], dtype=np.int64)
    images = ends[at + np.asarray(r["n_images"], dtype=np.int64)] - ends[at]
    frames = np.asarray(r["frames"], dtype=np.int64)
    return np.where(frames > 0, frames, images)


@dataclass
class PackingSettings:
    max_packed_tokens: int
    max_tiles: int
    buffer_size: int


class PackedDataset(torch.utils.data.Dataset):
    """Item i is the list of sample items of pack i of the run's pack stream (all its epochs, in order)."""

    def __init__(self, base: Any, settings: PackingSettings, epochs: float | None, multiple: int, seed: int,
                 min_packs: int = 0):
        """`epochs` of the base dataset (a fraction takes the first share of the last epoch's packs), or with
        `epochs=None` as many whole epochs as give `min_packs` packs (training by max_steps)."""
        self.base = base
        self.settings = settings
        self.tiles = sample_tiles(base.plan)
        self.packs: list[tuple[int, np.ndarray]] = []  # (epoch, epoch positions)
        self.epoch_sizes: list[int] = []
        whole = math.ceil(epochs) if epochs is not None else 10**9
        for epoch in range(whole):
            if epochs is None and len(self.packs) >= max(1, min_packs):
                break
            packs = self.epoch_packs(epoch, seed)
            if epoch == whole - 1 and epochs != whole:  # a fractional last epoch: its first share of packs
                packs = packs[: int(round(len(packs) * (epochs - epoch)))]
            self.epoch_sizes.append(len(packs))
            self.packs.extend((epoch, p) for p in packs)
        self.packs = even_out(self.packs, multiple)

    def epoch_packs(self, epoch: int, seed: int) -> list[np.ndarray]:
        """The packs of `epoch` as arrays of epoch positions (into the base dataset's epoch order)."""
        self.base.set_epoch(epoch)
        rows = self.base.epoch_order()
        plan = self.base.plan
        shuffle = np.random.default_rng([seed, epoch]).permutation(len(rows))
        lengths = np.asarray(plan.rows["length"])[rows][shuffle]
        tiles = self.tiles[rows][shuffle]
        s = self.settings
        return [shuffle[p] for p in pack_rows(lengths, tiles, s.max_packed_tokens, s.max_tiles, s.buffer_size)]

    def __len__(self) -> int:
        return len(self.packs)

    def set_epoch(self, epoch: int) -> None:  # one stream for the whole run: the Trainer's epochs change nothing
        pass

    def __getitem__(self, index: int) -> list[dict[str, Any]]:
        epoch, positions = self.packs[index]
        self.base.set_epoch(epoch)
        order = self.base.epoch_order()
        items = []
        for p in positions:
            try:
                items.append(self.base.load_row(int(order[p]), int(p)))
            except LoadFailed as e:
                where = self.base.sample_of_row(int(order[p])).line.where
                if self.base.on_error == "strict":
                    raise DataError(f"{where}: {e.reason}: {e.err} (data.on_error=strict; set data.on_error=skip to "
                                    "skip such samples)") from e.err
                # A replacement could overflow the pack: the pack goes on without this sample, counted.
                self.base.load_failures.add(e.reason)
                log.warning("%s: skipping sample (%s) from its pack: %s", where, e.reason, e.err)
        return items

    def real_token_fraction(self) -> float:
        """Planned tokens / (packs x max_packed_tokens): how full the packs' token budget is."""
        lengths = []
        for epoch, p in self.packs:
            self.base.set_epoch(epoch)
            lengths.append(int(np.asarray(self.base.plan.rows["length"])[self.base.epoch_order()[p]].sum()))
        return sum(lengths) / (len(lengths) * self.settings.max_packed_tokens) if lengths else 0.0


class PackedCollator:
    """A batch of packs as ONE flattened row: every sample of every pack, in order, no padding.

    input_ids/labels/position_ids: [1, total]; positions restart at 0 for each sample and its first label is
    -100, so no token predicts across a boundary; no attention_mask, so transformers' create_causal_mask builds
    the block-diagonal causal mask from position_ids (sdpa/eager). With flash attention, cu_seq_lens_q/k and
    max_length_q/k select the varlen kernel. pixel_values: every sample's tiles, in order.
    `loss_weight` (per position) and `sample_lengths` are for the trainer and the throughput callback only."""

    def __init__(self, reduction: str = "token", flash: bool = False):
        self.reduction = check_reduction(reduction)
        self.flash = flash

    def __call__(self, packs: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
        samples = [s for pack in packs for s in pack]
        if not samples:  # only under data.on_error=skip, when every sample of the batch failed (and was counted)

            raise DataError("every sample of a packed batch failed to load (data.on_error=skip); find such files "
                            "with `python -m internvl_exp.tools.data_check data=... --decode`")
        ids, labels, pos, weights, lens = [], [], [], [], []
        for s in samples:
            x = torch.as_tensor(s["input_ids"], dtype=torch.long)
            y = torch.as_tensor(s["labels"], dtype=torch.long).clone()
            y[0] = IGNORE_INDEX
            ids.append(x)
            labels.append(y)
            pos.append(torch.arange(len(x), dtype=torch.long))
            weights.append(sample_weight(y, self.reduction))
            lens.append(len(x))
        out: dict[str, Any] = {
            "input_ids": torch.cat(ids)[None],
            "labels": torch.cat(labels)[None],
            "position_ids": torch.cat(pos)[None],
            "loss_weight": torch.cat(weights)[None],
            "sample_lengths": torch.tensor(lens, dtype=torch.long),
        }
        if self.flash:
            cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
            cu[1:] = torch.cumsum(torch.tensor(lens), 0)
            out.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lens), max_length_k=max(lens))
        pixels = pixel_values(samples)
        if pixels is not None:
            out["pixel_values"] = pixels
        return out


def training_data(cfg: Config, dataset: Any, args: Any) -> tuple[Any, Any]:
    """(train dataset, collator) for data.packing / data.loss_reduction, adjusting `args` for a pack stream.

    Packed: the Trainer reads the whole planned stream (every epoch) in order as one epoch, so
    num_train_epochs becomes 1 and sampling sequential; the stream itself is shuffled and planned per epoch."""
    d = cfg.data
    pad = dataset.planner.tokenizer.pad_token_id
    if not d.packing.enabled:
        return dataset, Collator(pad, d.loss_reduction)
    p = d.packing
    per_step = args.per_device_train_batch_size * args.world_size
    epochs = None if args.max_steps > 0 else float(args.num_train_epochs)
    packed = PackedDataset(dataset, PackingSettings(p.max_packed_tokens, p.max_tiles, p.buffer_size), epochs,
                           per_step, d.seed, min_packs=max(0, args.max_steps) * per_step * args.gradient_accumulation_steps)
    log.info("packing: %d samples/epoch into %d packs over %d epoch(s) (per epoch: %s), %.1f%% of the pack "
             "capacity filled", len(dataset), len(packed), len(packed.epoch_sizes), packed.epoch_sizes,
             100 * packed.real_token_fraction())
    args.num_train_epochs = 1
    args.train_sampling_strategy = "sequential"
    flash = str(cfg.model.attn_implementation).startswith("flash_attention")
    return packed, PackedCollator(d.loss_reduction, flash=flash)
