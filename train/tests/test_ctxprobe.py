import numpy as np
import torch

from lungseg_train import ctxprobe as P
from lungseg_train import data as D


def test_inputs_place_the_box():
    rng = np.random.default_rng(1)
    sl = rng.uniform(-900, 100, (200, 240)).astype(np.float32)
    crop = rng.uniform(-900, 100, (44, 50)).astype(np.float32)
    y, x = 10, 150  # near the top: window C reaches above the slice
    xs, at = P.inputs(sl, crop, y, x)
    assert xs.shape == (4, 128, 128)
    (ya, xa), (yb, xb), (yc, xc), (yd, xd) = at
    assert np.array_equal(xs[0], D.pad_bare_crop(crop, 128, D.OUTSIDE_HU))
    assert np.array_equal(xs[1], D.pad_bare_crop(sl[y:y + 44, x:x + 50], 128, D.OUTSIDE_HU))
    assert np.array_equal(xs[0][ya:ya + 44, xa:xa + 50], crop)
    # C holds the slice's box where `at` says, in context, air beyond the slice's top
    assert np.array_equal(xs[2][yc:yc + 44, xc:xc + 50], sl[y:y + 44, x:x + 50])
    assert (yc, xc) == (64 - 22, 64 - 25)
    assert np.all(xs[2][:yc - y] == D.OUTSIDE_HU) and not np.any(xs[2][yc - y:] == D.OUTSIDE_HU)
    # D is C with the box replaced by the crop
    assert np.array_equal(xs[3][yd:yd + 44, xd:xd + 50], crop)
    out = np.ones((128, 128), bool)
    out[yd:yd + 44, xd:xd + 50] = False
    assert np.array_equal(xs[3][out], xs[2][out])


class Dark(torch.nn.Module):
    """Marks pixels darker than -500 HU: air padding included, so context must show in C."""

    def forward(self, x):
        return 50.0 * (float(D.window(np.float32(-500.0))) - x)


def test_probe_scores_each_input_in_the_box():
    sl = np.full((256, 256), 0.0, np.float32)
    truth = np.zeros((1, 256, 256), bool)
    truth[0, 120:130, 120:130] = True
    sl[truth[0]] = -800.0  # a dark "nodule" where the slice's truth is
    crop = np.full((44, 44), 0.0, np.float32)
    crop[10:20, 10:20] = -800.0
    cmask = np.zeros((44, 44), np.uint8)
    cmask[10:20, 10:20] = 1

    class Crops:
        def bare(self, j):
            return crop, cmask

    r = P.probe(Dark(), {"threshold": 0.5}, sl[None], truth, [(0, 0, 110, 110, 1.0)], Crops())
    assert r.shape == (1, 7)
    assert np.allclose(r[0], 1.0)  # the same dark square everywhere, the box's own pixels scored
    sl2 = sl.copy()
    sl2[truth[0]] = 0.0  # the slice no longer shows it: B and C miss, A and D still find it
    r = P.probe(Dark(), {"threshold": 0.5}, sl2[None], truth, [(0, 0, 110, 110, 1.0)], Crops())
    assert r[0, 0] == 1.0 and r[0, 3] == 1.0 and r[0, 1] == 0.0 and r[0, 2] == 0.0 and r[0, 6] == 1.0
