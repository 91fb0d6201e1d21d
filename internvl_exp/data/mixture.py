"""Weighted mixtures: each dataset's share of an epoch set by a per-dataset `weight`.

Without weights, an epoch is the concatenation of every dataset after `repeat_time`. With weights (set on
every dataset or on none), the epoch keeps that same total size N, and dataset i gets
``round(N * w_i / sum(w))`` slots (largest-remainder rounding, so the slots add up to N exactly). A
dataset fills its slots with whole passes over its samples plus a seeded random subset for the rest, so
no sample repeats before every sample of its dataset has appeared once. The Trainer's sampler then
shuffles the epoch as usual.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence, TypeVar

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


def take(items: Sequence[T], k: int, rng: random.Random) -> list[T]:
    """`k` items: whole passes over `items`, then a random subset (without replacement) for the rest."""
    if not items:
        return []
    whole, rest = divmod(k, len(items))
    out = list(items) * whole
    out += [items[i] for i in sorted(rng.sample(range(len(items)), rest))]
    return out


def mix(groups: Mapping[str, Sequence[T]], weights: Mapping[str, float], seed: int) -> tuple[list[T], dict[str, int]]:
    """One epoch of the weighted mixture, and the slots given to each dataset."""
    missing = [name for name in groups if name not in weights]
    if missing:
        raise MixtureError(
            f"dataset(s) {missing} have no weight while others do; set `weight` on every dataset or on none"
        )
    total = sum(len(g) for g in groups.values())
    slots = quotas({n: len(g) for n, g in groups.items()}, weights, total)
    out: list[T] = []
    for name, group in groups.items():
        out += take(group, slots[name], random.Random(f"{seed}-mix-{name}"))
    return out, slots
