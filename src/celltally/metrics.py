"""Count and detection metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

DETECTION_RADIUS = 5.0  # pixels: a predicted centre this close to a true one is a hit


def count_metrics(true: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    """MAE, RMSE and mean relative error (|error| / true count, images with true count > 0)."""
    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    if true.shape != predicted.shape or true.size == 0:
        raise ValueError("need equally many true and predicted counts, at least one")
    error = predicted - true
    positive = true > 0
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "mre": float((np.abs(error[positive]) / true[positive]).mean())
        if positive.any()
        else float("nan"),
    }


def match_points(predicted: np.ndarray, true: np.ndarray, radius: float) -> int:
    """Number of one-to-one pairs (predicted, true) within ``radius``, maximised.

    Each point is used at most once; pairs further apart than ``radius`` are not allowed. The
    maximum matching is found with the Hungarian algorithm on the candidate pairs.
    """
    if len(predicted) == 0 or len(true) == 0:
        return 0
    neighbours = cKDTree(predicted).query_ball_tree(cKDTree(true), radius)
    pair_rows = np.repeat(np.arange(len(predicted)), [len(n) for n in neighbours])
    pair_cols = np.fromiter((j for n in neighbours for j in n), dtype=int, count=len(pair_rows))
    if len(pair_rows) == 0:
        return 0
    distance = np.linalg.norm(predicted[pair_rows] - true[pair_cols], axis=1)
    rows, row_index = np.unique(pair_rows, return_inverse=True)
    cols, col_index = np.unique(pair_cols, return_inverse=True)
    # Forbidden pairs cost more than any feasible full matching, so the optimum matches the
    # most pairs, and among those the closest.
    forbidden = radius * (len(rows) + 1) + 1.0
    cost = np.full((len(rows), len(cols)), forbidden)
    cost[row_index, col_index] = distance
    r, c = linear_sum_assignment(cost)
    return int((cost[r, c] < forbidden).sum())


def detection_metrics(
    predicted: Sequence[np.ndarray], true: Sequence[np.ndarray], radius: float = DETECTION_RADIUS
) -> dict[str, float]:
    """Precision, recall and F1 of one-to-one matches within ``radius``, pooled over images."""
    hits = sum(match_points(p, t, radius) for p, t in zip(predicted, true, strict=True))
    n_pred, n_true = sum(len(p) for p in predicted), sum(len(t) for t in true)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_true if n_true else 0.0
    f1 = 2 * hits / (n_pred + n_true) if n_pred + n_true else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "radius": radius}
