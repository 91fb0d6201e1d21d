"""The summary numbers data_check reports, for SFT samples and preference pairs alike."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def percentile(values: Sequence[int] | np.ndarray, q: float) -> int:
    """Nearest-rank percentile: the smallest value with at least q% of the values <= it (0 for no values).
    Sorted as an array: data_check passes millions of lengths."""
    ordered = np.sort(np.asarray(values))
    if not len(ordered):
        return 0
    return int(ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1])
