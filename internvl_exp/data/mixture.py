"""Weighted mixtures: each dataset's share of an epoch set by a per-dataset `weight`.

Without weights, dataset i gets `repeat_count(n_i, repeat_time_i)` slots per epoch. With weights (set on
every dataset or on none), the epoch keeps that same total size N, and dataset i gets
``round(N * w_i / sum(w))`` slots (largest-remainder rounding, so the slots add up to N exactly). Either
way a dataset fills its slots from its *distinct* usable samples: whole passes, plus a random subset
(without replacement) for the rest, so no sample repeats before every sample of its dataset has appeared
once. The subset is drawn per epoch (seeded by data.seed, the dataset and the epoch): reproducible, and a
different part of a down-sampled dataset each epoch. The Trainer's sampler then shuffles the epoch.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence, TypeVar

import numpy as np

from internvl_exp.errors import UserError

T = TypeVar("T")


class MixtureError(UserError):
    """Weights that cannot define a mixture (the message names the datasets)."""


def quotas(sizes: Mapping[str, int], weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Slots per dataset: proportional to weight, summing to `total` (largest remainder)."""
    usable = {name: w for name, w in weights.items() if w > 0 and sizes.get(name, 0) > 0}
    if not usable:
        raise MixtureError(f"no dataset has both a positive weight and at least one usable sample: weights {dict(weights)}")
    norm = sum(usable.values())
    exact = {name: total * w / norm for name, w in usable.items()}
    out = {name: math.floor(v) for name, v in exact.items()}
    # Hand the leftover slots to the largest fractional parts (ties: dataset order), deterministically.
    order = sorted(usable, key=lambda n: (-(exact[n] - out[n]), list(usable).index(n)))
    for name in order[: total - sum(out.values())]:
        out[name] += 1
    return {name: out.get(name, 0) for name in weights}


def take_indices(n: int, k: int, rng: random.Random) -> np.ndarray:
    """`k` indices into `n` items: whole passes, then a random subset (without replacement) for the rest."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    whole, rest = divmod(k, n)
    subset = np.sort(np.fromiter(rng.sample(range(n), rest), dtype=np.int64, count=rest))
    return np.concatenate([np.tile(np.arange(n, dtype=np.int64), whole), subset])


def take(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """`k` items: whole passes over `items`, then a random subset (without replacement) for the rest."""
    return [items[i] for i in take_indices(len(items), k, rng)]


def repeat_count(n: int, repeat_time: float) -> int:
    """Samples that `repeat_time` makes of `n`: whole copies for the integer part, a share for the fraction."""
    whole = math.floor(repeat_time)
    return whole * n + int(round(n * (repeat_time - whole)))


def epoch_slots(sizes: Mapping[str, int], repeat_times: Mapping[str, float],
                weights: Mapping[str, float | None]) -> dict[str, int]:
    """Samples per dataset in every epoch: `repeat_time`'s count, or the weighted share of their total."""
    pools = {name: repeat_count(n, repeat_times[name]) for name, n in sizes.items()}
    given = {name: w for name, w in weights.items() if w is not None}
    if not given or not any(pools.values()):
        return pools
    missing = [name for name in sizes if name not in given]
    if missing:
        raise MixtureError(
            f"dataset(s) {missing} have no weight while others do; set `weight` on every dataset or on none"
        )
    return quotas(pools, given, sum(pools.values()))


def epoch_indices(sizes: Mapping[str, int], slots: Mapping[str, int], seed: int, epoch: int) -> dict[str, np.ndarray]:
    """Per dataset, which of its distinct samples fill its slots in `epoch` (indices into that dataset)."""
    return {name: take_indices(n, slots[name], random.Random(f"{seed}-{name}-epoch{epoch}")) for name, n in sizes.items()}


def mix(groups: Mapping[str, Sequence[T]], weights: Mapping[str, float], seed: int, epoch: int = 0) -> tuple[list[T], dict[str, int]]:
    """One epoch of the weighted mixture of `groups` (each used once, repeat_time 1), and each one's slots."""
    sizes = {name: len(g) for name, g in groups.items()}
    slots = epoch_slots(sizes, {name: 1.0 for name in groups}, weights)
    picks = epoch_indices(sizes, slots, seed, epoch)
    return [groups[name][i] for name in groups for i in picks[name]], slots
