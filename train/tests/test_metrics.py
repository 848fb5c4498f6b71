import math

import numpy as np
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


def test_mean_over_images_with_truth_counts_empty_images_apart():
    # image 1: truth 2 px, pred 1 of them (Dice 2/3); image 2: empty truth, empty pred;
    # image 3: empty truth, 1 px predicted (a false-positive image); image 4: truth 1 px, missed (Dice 0)
    prob = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0] * 4, [0.9, 0.0, 0.0, 0.0], [0.0] * 4]).view(4, 1, 2, 2)
    mask = torch.tensor([[1, 1, 0, 0], [0] * 4, [0] * 4, [0, 0, 0, 1]], dtype=torch.float32).view(4, 1, 2, 2)
    s = Scores([0.5])
    s.add(prob, mask, diam=torch.tensor([7.0, 0.0, 0.0, 25.0]))
    a = s.summary(0.5)
    assert a["mean_dice"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert a["n_nonempty"] == 2 and a["n_both_empty"] == 1 and a["n_fp_empty"] == 1
    assert a["dice"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))  # pooled: TP 1, FP 1, FN 2
    assert a["by_size"]["6-10"] == {"n": 1, "mean_dice": pytest.approx(2 / 3)}
    assert a["by_size"][">20"]["mean_dice"] == 0.0 and a["by_size"]["<6"]["n"] == 0


def test_best_threshold_uses_the_mean_not_pooled():
    # a big nodule (400 px, 100 of them at 0.5) and a small one (4 px at 0.9, 20 background px at 0.4):
    # t=0.3 suits the big one and the pool (pooled 0.976 vs 0.859), t=0.7 the mean (0.929 vs 0.643)
    big_p = torch.tensor([0.9] * 300 + [0.5] * 100)
    big_y = torch.ones(400)
    small_p = torch.tensor([0.9] * 4 + [0.4] * 20 + [0.0] * 376)
    small_y = torch.tensor([1.0] * 4 + [0.0] * 396)
    prob = torch.stack([big_p, small_p]).view(2, 1, 20, 20)
    mask = torch.stack([big_y, small_y]).view(2, 1, 20, 20)
    s = Scores([0.3, 0.7])
    s.add(prob, mask)
    assert s.best_threshold("pooled") == 0.3
    assert s.best_threshold() == 0.7
    assert s.summary(0.7)["mean_dice"] == pytest.approx((600 / 700 + 1.0) / 2)


def test_longest_diameter_of_the_largest_8_connected_component():
    from lungseg_train.metrics import longest_diameter_mm, size_bin

    m = np.zeros((20, 20), np.uint8)
    m[2:5, 2:12] = 1  # 3 x 10 block: farthest centres (2,2)-(4,11): sqrt(4 + 81)
    m[15, 15] = 1  # a smaller component, ignored
    assert longest_diameter_mm(m, 0.5) == pytest.approx(0.5 * math.sqrt(85))
    d = np.zeros((5, 5), np.uint8)
    d[0, 0] = d[1, 1] = d[2, 2] = 1  # diagonal neighbours are one 8-connected component
    assert longest_diameter_mm(d, 1.0) == pytest.approx(math.sqrt(8))
    assert longest_diameter_mm(np.zeros((4, 4)), 1.0) == 0.0
    assert size_bin(5.9) == "<6" and size_bin(6.0) == "6-10" and size_bin(20.0) == ">20" and size_bin(0.0) is None


def test_oracle_mean_gives_each_image_its_own_best_threshold():
    # the same two images: the big one is best at 0.3 (1.0), the small one at 0.7 (1.0); an empty-truth
    # image is left out as in the headline mean
    big_p = torch.tensor([0.9] * 300 + [0.5] * 100)
    small_p = torch.tensor([0.9] * 4 + [0.4] * 20 + [0.0] * 376)
    prob = torch.stack([big_p, small_p, torch.full((400,), 0.8)]).view(3, 1, 20, 20)
    mask = torch.stack([torch.ones(400), torch.tensor([1.0] * 4 + [0.0] * 396), torch.zeros(400)]).view(3, 1, 20, 20)
    s = Scores([0.3, 0.7])
    s.add(prob, mask)
    assert s.oracle_mean() == pytest.approx(1.0)
    assert s.oracle_mean() > s.summary(s.best_threshold())["mean_dice"]
