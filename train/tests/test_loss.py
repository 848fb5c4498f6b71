"""The per-image Dice loss weighs a missed small nodule like a missed large one."""

import torch

from lungseg_train.train import loss_fn


def _batch():
    # image 0: a 20x20 nodule predicted perfectly; image 1: a 2x2 nodule missed
    y = torch.zeros(2, 1, 32, 32)
    y[0, 0, 4:24, 4:24] = 1
    y[1, 0, 10:12, 10:12] = 1
    logits = torch.full_like(y, -20.0)
    logits[0, 0, 4:24, 4:24] = 20.0
    return logits, y


def test_pooled_dice_hides_the_small_miss():
    logits, y = _batch()
    pooled = loss_fn(logits, y, "dicebce") - loss_fn(logits, y, "bce")
    per_image = loss_fn(logits, y, "dicebce-image") - loss_fn(logits, y, "bce")
    # pooled: 2*400/(400+404) -> loss ~0.005; per image: (0 + ~0.8)/2
    assert pooled < 0.02
    assert 0.35 < per_image < 0.5


def test_empty_truth_pushes_prediction_down():
    y = torch.zeros(1, 1, 16, 16)
    on = torch.full_like(y, 5.0)
    off = torch.full_like(y, -5.0)
    assert loss_fn(on, y, "dicebce-image") > loss_fn(off, y, "dicebce-image") + 0.5
