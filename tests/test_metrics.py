import numpy as np
import pytest

from celltally.metrics import count_metrics, detection_metrics, match_points


def test_count_metrics_by_hand():
    metrics = count_metrics([10, 20, 40], [12, 17, 40])
    assert metrics["mae"] == pytest.approx(5 / 3)
    assert metrics["rmse"] == pytest.approx(np.sqrt(13 / 3))
    assert metrics["mre"] == pytest.approx((0.2 + 0.15 + 0) / 3)


def test_matching_is_one_to_one_and_maximal():
    true = np.array([[0.0, 0.0], [0.0, 4.0]])
    # greedy nearest-first pairing would take (0,1)-(0,0) and leave two points unmatched
    predicted = np.array([[0.0, 1.0], [0.0, -2.5]])
    assert match_points(predicted, true, radius=3.5) == 2
    assert match_points(np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 0.0]]), 1.0) == 1
    assert match_points(np.zeros((0, 2)), true, 5.0) == 0
    assert match_points(np.array([[10.0, 10.0]]), true, 5.0) == 0


def test_detection_metrics_by_hand():
    true = [np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([[5.0, 5.0]])]
    predicted = [np.array([[1.0, 1.0], [30.0, 30.0], [11.0, 10.0]]), np.zeros((0, 2))]
    metrics = detection_metrics(predicted, true, radius=2.0)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 * 2 / (3 + 3))
