"""Length-grouped batching without packing (`data.group_by_length`, as InternVL's scripts use).

HF's LengthGroupedSampler (random mega-batches of 50 x the step's samples, sorted by length inside) with the
lengths the pre-flight plan already knows: no sample is loaded to measure it. The lengths are read again at
each epoch, since a weighted mixture draws a different subset every epoch.
"""

from __future__ import annotations

from typing import Any

from transformers.trainer_pt_utils import LengthGroupedSampler


class PlanLengthGroupedSampler(LengthGroupedSampler):
    def __init__(self, batch_size: int, dataset: Any, generator: Any = None):
        self.dataset = dataset
        super().__init__(batch_size, lengths=dataset.lengths.tolist(), generator=generator)

    def __iter__(self):
        self.lengths = self.dataset.lengths.tolist()
        return super().__iter__()
