import math

import pytest
import torch

from lungseg_train.metrics import Scores


def test_scores_by_hand():
    prob = torch.tensor([[0.9, 0.8, 0.2, 0.1], [0.6, 0.1, 0.1, 0.1]]).view(2, 1, 2, 2)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.float32).view(2, 1, 2, 2)
    s = Scores([0.5, 0.85])
    s.add(prob, mask)
    a = s.summary(0.5)
    # t=0.5: image 1 TP=1 FP=1 FN=1; image 2 FP=1
    assert a["dice"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    assert a["iou"] == pytest.approx(1 / 4)
    assert a["dice_mean"] == pytest.approx((2 / 4 + 0.0) / 2)
    assert a["dice_mean_nonempty"] == pytest.approx(0.5)
    sq = [(0.9 - 1) ** 2, 0.8 ** 2, 0.8 ** 2, 0.1 ** 2, 0.6 ** 2, 0.01, 0.01, 0.01]
    assert a["rmse"] == pytest.approx(math.sqrt(sum(sq) / 8))
    assert a["rmse_binary"] == pytest.approx(math.sqrt(3 / 8))
    b = s.summary(0.85)  # TP=1 FN=1, no FP
    assert b["dice"] == pytest.approx(2 / 3)
    assert s.best_threshold() == 0.85


def test_valid_restricts_counting_and_empty_pairs_score_one():
    prob = torch.tensor([0.9, 0.9, 0.1, 0.1]).view(1, 1, 2, 2)
    mask = torch.zeros(1, 1, 2, 2)
    valid = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 2, 2)
    s = Scores([0.5])
    s.add(prob, mask, valid)
    a = s.summary(0.5)
    assert a["dice_mean"] == 1.0
    assert a["rmse_binary"] == 0.0
    assert a["rmse"] == pytest.approx(0.1)
