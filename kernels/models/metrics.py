"""How well a segmentation matches another."""

from __future__ import annotations

import numpy as np


def dice_per_label(predicted: np.ndarray, truth: np.ndarray,
                   labels: dict[int, str]) -> dict[str, float]:
    """Dice coefficient of each label between two label arrays of one shape
    (1.0 where neither has the label)."""
    out = {}
    for value, name in labels.items():
        p, t = predicted == value, truth == value
        total = int(p.sum()) + int(t.sum())
        out[name] = 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total
    return out
