import json
import math
import os

import numpy as np
import pytest
import torch

from lungseg_train import composite as C
from lungseg_train import data as D
from lungseg_train import metrics as MX


def test_pad_bare_crop_centres_with_air_like_numpy_constant():
    a = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    w = D.pad_bare_crop(a, 8, D.OUTSIDE_HU)
    y0, x0 = (8 - 3) // 2, (8 - 5) // 2
    assert (y0, x0) == D.bare_offset(3, 5, 8) == (2, 1)
    assert w.shape == (8, 8)
    np.testing.assert_array_equal(w, np.pad(a, ((2, 3), (1, 2)), mode="constant", constant_values=-1024))
    np.testing.assert_array_equal(w[y0:y0 + 3, x0:x0 + 5], a)
    np.testing.assert_array_equal(D.unpad_bare(w, 3, 5), a)
    # air around it, not the crop's own rows
    assert (w[y0 - 1] == D.OUTSIDE_HU).all() and (w[:, x0 + 5] == D.OUTSIDE_HU).all()
    # masks pad with 0
    m = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(D.pad_bare_crop(m, 5, 0.0), np.pad(m, ((2, 2), (1, 1))))


def test_fit_bare_cuts_only_what_does_not_fit():
    a = np.arange(65 * 61).reshape(65, 61)
    np.testing.assert_array_equal(D.fit_bare(a, 128), a)
    c = D.fit_bare(a, 64)
    assert c.shape == (64, 61)
    np.testing.assert_array_equal(c, a[0:64])
    np.testing.assert_array_equal(D.fit_bare(np.zeros((70, 90)), 64).shape, (64, 64))


def test_pad_bare_crop_refuses_too_large():
    with pytest.raises(ValueError):
        D.pad_bare_crop(np.zeros((10, 3)), 8, 0.0)


def test_bare_eval_set_scores_only_crop_pixels():
    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=3, slices_per_patient=1)
    bs = C.bare_eval_set(d.crops, 128)
    assert bs.x.shape == (len(d.crops), 1, 128, 128)
    for i in range(len(d.crops)):
        h, w = d.crops.hw[i]
        assert int(bs.valid[i].sum()) == h * w
        hu, m = d.crops.bare(i)
        np.testing.assert_allclose(D.unpad_bare(bs.x[i, 0].numpy(), h, w), D.window(hu.astype(np.float32)), atol=1e-6)
        np.testing.assert_array_equal(D.unpad_bare(bs.y[i, 0].numpy(), h, w), m)
    # a perfect prediction scores 1 on every image with truth, even with garbage outside the crop
    prob = bs.y.clone()
    prob[bs.valid < 0.5] = 1.0
    sc = MX.Scores([0.5])
    sc.add(prob, bs.y, bs.valid, bs.diam)
    s = sc.summary(0.5)
    assert s["mean_dice"] == 1.0 and s["n_fp_empty"] == 0
    assert s["n_both_empty"] == len(d.crops) - s["n_nonempty"]


def test_bare_training_batch_shapes_and_masks():
    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=3, slices_per_patient=1)
    g = torch.Generator()
    g.manual_seed(0)
    x, y = C.bare_training_batch(d.crops, C.Rand(g, "cpu"), 6, 128)
    assert x.shape == y.shape == (6, 1, 128, 128)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}


def test_enlarge_bare_scales_the_nodule_about_the_centre():
    yy, xx = np.mgrid[0:40, 0:50]
    m = (((yy - 19.5) ** 2 + (xx - 24.5) ** 2) <= 8 ** 2).astype(np.uint8)
    a = np.where(m > 0, 30.0, -850.0).astype(np.float32)
    ea, em = C.enlarge_bare(a, m, 2.0)
    assert ea.shape == em.shape == (80, 100) and em.dtype == m.dtype
    assert abs(int(em.sum()) - 4 * int(m.sum())) <= 0.05 * 4 * int(m.sum())
    ys, xs = np.nonzero(em)
    assert abs(ys.mean() - 39.5) < 0.5 and abs(xs.mean() - 49.5) < 0.5
    assert float(ea.max()) <= 30.0 + 1e-3 and float(ea.min()) >= -850.0 - 1e-3


def test_bare_training_batch_upscale_enlarges_a_share_of_the_crops():
    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=3, slices_per_patient=1)

    def areas(**kw):
        g = torch.Generator()
        g.manual_seed(3)
        _, y = C.bare_training_batch(d.crops, C.Rand(g, "cpu"), 64, 128, **kw)
        return y.sum(dim=(1, 2, 3))

    plain = areas()
    assert torch.equal(plain, areas(upscale=2.0, p_upscale=0.0))  # off: the same batch as before
    big = areas(upscale=2.0, p_upscale=1.0)
    assert float(big.sum()) > 1.5 * float(plain.sum())
    some = areas(upscale=2.0, p_upscale=0.5)
    assert float(plain.sum()) < float(some.sum()) < float(big.sum())


def test_bare_training_batch_affine_turns_and_scales_a_share_of_the_crops():
    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=3, slices_per_patient=1)

    def batch(**kw):
        g = torch.Generator()
        g.manual_seed(5)
        return C.bare_training_batch(d.crops, C.Rand(g, "cpu"), 32, 128, aug=False, **kw)

    x0, y0 = batch()
    xa, ya = batch(p_affine=0.0)
    assert torch.equal(x0, xa) and torch.equal(y0, ya)  # off: the same batch as before
    x1, y1 = batch(p_affine=1.0)
    assert x1.shape == y1.shape == (32, 1, 128, 128)
    assert set(torch.unique(y1).tolist()) <= {0.0, 1.0}
    changed = sum(not torch.equal(y0[k], y1[k]) for k in range(32) if float(y0[k].sum()) > 0)
    assert changed >= 0.8 * sum(float(y0[k].sum()) > 0 for k in range(32))
    # the same crops in the same order (their draws come first), so each resampled mask is its
    # crop's, turned and scaled: its area within the scale's square (and a pixel's rounding)
    for k in range(32):
        a0, a1 = float(y0[k].sum()), float(y1[k].sum())
        if a0 < 30:
            continue
        assert a0 / 1.25 ** 2 * 0.8 <= a1 <= a0 * 1.25 ** 2 * 1.2
    _, yh = batch(p_affine=0.5)
    n_same = sum(torch.equal(y0[k], yh[k]) for k in range(32))
    assert 4 <= n_same <= 28, n_same


def test_bare_probs_tta_averages_the_mapped_back_copies():
    from lungseg_train import bare_eval as BE

    torch.manual_seed(0)
    n, w = 3, 16
    bs = C.BareSet(torch.randn(n, 1, w, w), (torch.rand(n, 1, w, w) > 0.5).float(),
                   torch.ones(n, 1, w, w), torch.tensor([3.0, 8.0, 25.0]))
    ramp = torch.linspace(-2, 2, w).view(1, 1, 1, w)

    class Skewed(torch.nn.Module):  # not flip-equivariant: adds a left-right ramp
        def forward(self, x):
            return x + ramp

    m = Skewed()
    none = BE.bare_probs(m, bs, batch=2)
    torch.testing.assert_close(none, torch.sigmoid(bs.x + ramp))
    # flip2: identity and the left-right flipped copy mapped back, averaged
    want = (torch.sigmoid(bs.x + ramp) + torch.sigmoid(bs.x + ramp.flip(-1))) / 2
    torch.testing.assert_close(BE.bare_probs(m, bs, batch=2, mode="flip2"), want)
    assert not torch.allclose(want, none)
    # the scores are those of the probabilities, batch size aside
    a, b = BE.scores_of(want, bs, batch=1), BE.bare_scores(m, bs, batch=3)
    assert a.summary(0.5)["n"] == b.summary(0.5)["n"] == n
    with pytest.raises(ValueError):
        BE.main(["unused", "--modes", "flip3"])
