import numpy as np
import torch

from lungseg_train import composite as C
from lungseg_train import data as D
from lungseg_train import models as M
from lungseg_train import zctx as Z


def _crops(ids, size=6):
    """A CropSet whose crop i is filled with i (mask: the centre pixel)."""
    n, p = len(ids), D.CROP_PAD
    hu = np.zeros((n, p, p), np.int16)
    mask = np.zeros((n, p, p), np.uint8)
    y0 = (p - size) // 2
    for i in range(n):
        hu[i, y0:y0 + size, y0:y0 + size] = i
        mask[i, y0 + size // 2, y0 + size // 2] = 1
    return D.CropSet(hu, mask, np.full((n, 2), size, np.int32), np.full(n, 0.7, np.float32),
                     np.array([pid for pid, _ in ids]), np.array([sid for _, sid in ids]))


def test_neighbours_stay_within_a_nodule_and_repeat_at_its_ends():
    # two patients with a nodule "n01" each, and a second nodule of A, in shuffled order
    ids = [("A", "n01_k01"), ("B", "n01_k00"), ("A", "n01_k00"), ("A", "n02_k00"), ("A", "n01_k02"),
           ("B", "n01_k01"), ("A", "n02_k01")]
    nb = Z.neighbours(_crops(ids))
    want = {0: (2, 4), 1: (1, 5), 2: (2, 0), 3: (3, 6), 4: (0, 4), 5: (1, 5), 6: (3, 6)}
    for i, (lo, hi) in want.items():
        assert tuple(nb[i]) == (lo, hi), (ids[i], nb[i])


def test_stack_puts_below_itself_above_in_order():
    ids = [("A", "n01_k00"), ("A", "n01_k01"), ("A", "n01_k02")]
    c = _crops(ids)
    nb = Z.neighbours(c)
    a, m = Z.stack(c, nb, 1, 1)
    assert a.shape == (3, 6, 6) and [float(ch[0, 0]) for ch in a] == [0.0, 1.0, 2.0]
    a0, _ = Z.stack(c, nb, 1, 0)
    assert a0.shape == (1, 6, 6) and float(a0[0, 0, 0]) == 1.0
    assert m.sum() == 1


def test_batches_keep_channels_and_mask_aligned():
    # crops of HU 0..4 (about 0.5 after the window) in air (-1024 HU, about 0.22)
    ids = [("A", f"n01_k{k:02d}") for k in range(5)]
    c = _crops(ids, size=9)
    bt = Z.Batches(c, 1, seed=3)
    x, y = bt.next(4)
    assert x.shape == (4, 3, 64, 64) and y.shape == (4, 1, 64, 64)
    for j in range(4):
        crop = x[j] > 0.36
        assert int(crop[0].sum()) == 81
        assert torch.equal(crop[0], crop[1]) and torch.equal(crop[0], crop[2])
        assert int(y[j, 0].sum()) == 1 and bool(crop[0][y[j, 0] > 0].all())


def test_eval_set_centres_each_crop_in_a_128_window():
    ids = [("A", "n01_k00"), ("A", "n01_k01")]
    bs = Z.eval_set(_crops(ids, size=8), 1)
    x, y, v = bs.x, bs.y, bs.valid
    assert x.shape == (2, 3, 128, 128)
    assert int(v[0].sum()) == 64 and int(y[0].sum()) == 1
    y0 = (128 - 8) // 2
    assert v[0, 0, y0, y0] == 1 and v[0, 0, y0 - 1, y0] == 0


def test_upscaled_batches_are_twice_as_fine_with_blocky_masks():
    ids = [("A", f"n01_k{k:02d}") for k in range(3)]
    bt = Z.Batches(_crops(ids, size=9), 0, seed=1, upscale=2)
    x, y = bt.next(3)
    assert x.shape == (3, 1, 128, 128) and y.shape == (3, 1, 128, 128)
    for j in range(3):
        # the centre pixel's mask becomes one 2x2 block on the finer grid, on the crop
        assert int(y[j, 0].sum()) == 4
        r, c = [int(t) for t in torch.nonzero(y[j, 0])[0]]
        assert r % 2 == 0 and c % 2 == 0 and bool((y[j, 0, r:r + 2, c:c + 2] == 1).all())
        assert bool((x[j, 0][y[j, 0] > 0] > 0.36).all())


class _Probe(torch.nn.Module):
    """Logit 5 where the (finer-grid) input is above 0.5, else -5; records the input's size."""

    def forward(self, x):
        self.seen = tuple(x.shape)
        return torch.where(x > 0.5, torch.tensor(5.0), torch.tensor(-5.0))


def test_upscaled_runs_the_model_on_the_finer_grid_and_pools_probabilities_back():
    probe = _Probe()
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2:4, 2:4] = 1.0
    out = Z.Upscaled(probe, 2)(x)
    assert probe.seen == (1, 1, 16, 16) and out.shape == (1, 1, 8, 8)
    p = torch.sigmoid(out)[0, 0]
    # back on the native grid, in place: the square and nothing else (a shift by one
    # fine pixel, or pooling the logits of the wrong blocks, would move or blur it)
    assert torch.equal(p > 0.5, x[0, 0] > 0.5)
    assert float(p[2:4, 2:4].min()) > 0.99 and float(p[x[0, 0] == 0].max()) < 0.01


def test_affine_is_the_identity_at_no_angle_and_unit_scale_and_turns_a_quarter_like_rot90():
    x = np.full((1, 32, 32), D.OUTSIDE_HU, np.float32)
    m = np.zeros((32, 32), np.float32)
    x[0, 10:20, 12:16] = 40.0
    m[10:20, 12:16] = 1.0
    xo, mo = C.rotate_scale(x, m, (14.5, 13.5), 0.0, 1.0)
    assert np.allclose(xo, x) and np.array_equal(mo, m)
    # a quarter turn about the rectangle's centre: 10 rows x 4 cols becomes 4 x 10, same centre
    xo, mo = C.rotate_scale(x, m, (14.5, 13.5), np.pi / 2, 1.0)
    ys, xs = np.nonzero(mo)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (4, 10)
    assert abs(ys.mean() - 14.5) < 0.6 and abs(xs.mean() - 13.5) < 0.6
    assert set(np.unique(mo)) <= {0.0, 1.0}
    assert np.allclose(xo[0][mo > 0], 40.0, atol=1e-3)  # inside stays the crop's HU
    # scale 1.25 grows the area by about 1.25², air stays air far away
    _, m2 = C.rotate_scale(x, m, (14.5, 13.5), 0.0, 1.25)
    assert 1.3 < m2.sum() / m.sum() < 1.9
    assert xo[0, 0, 0] == D.OUTSIDE_HU


def test_affine_batches_resample_only_their_share():
    ids = [("A", f"n01_k{k:02d}") for k in range(5)]
    c = _crops(ids, size=9)
    x0, y0 = Z.Batches(c, 0, seed=3).next(8)
    assert all(int(y0[j, 0].sum()) == 1 for j in range(8))
    # all resampled: masks are still binary, single-pixel truths may grow or vanish but never leave [0, 1]
    x1, y1 = Z.Batches(c, 0, seed=3, affine=1.0).next(8)
    assert set(torch.unique(y1).tolist()) <= {0.0, 1.0} and x1.shape == x0.shape
    assert not torch.equal(x1, x0)


def test_mirror_batches_fill_the_window_with_the_crop_and_mirror_the_mask_alike():
    # crops of HU 0..4 (about 0.5 after the window; air about 0.22): mirrored, no air is left in the
    # window, and every mirrored copy of the truth pixel sits on the crop's own HU
    ids = [("A", f"n01_k{k:02d}") for k in range(5)]
    c = _crops(ids, size=9)
    x, y = Z.Batches(c, 0, seed=3, mirror=1.0).next(4)
    assert x.shape == (4, 1, 64, 64)
    for j in range(4):
        assert bool((x[j, 0] > 0.36).all())
        # a 9-px crop mirrored over 64 px repeats its centre pixel every 8 px (reflect without the edge):
        # 7 or 8 copies along each axis, by where the crop sits
        ys, xs = torch.nonzero(y[j, 0], as_tuple=True)
        assert 49 <= len(ys) <= 64
        assert set(torch.diff(torch.unique(ys)).tolist()) == {8} and set(torch.diff(torch.unique(xs)).tolist()) == {8}
    x0, y0 = Z.Batches(c, 0, seed=3).next(4)
    assert all(int(y0[j, 0].sum()) == 1 for j in range(4))
    # with rotations too the window stays tissue (mirrored beyond it), masks binary
    x2, y2 = Z.Batches(c, 0, seed=3, affine=1.0, mirror=1.0).next(4)
    assert bool((x2 > 0.36).all()) and set(torch.unique(y2).tolist()) <= {0.0, 1.0}


def test_mirror_index_is_numpy_reflect_when_the_pads_are_short_and_periodic_when_long():
    a = np.arange(9)
    for start in range(0, 9):
        for size in (9, 12, 16):
            if start + 9 <= size and size - 9 - start <= 8 and start <= 8:
                want = np.pad(a, (start, size - 9 - start), mode="reflect")
                assert np.array_equal(a[Z.mirror_index(9, start, size)], want), (start, size)
    idx = Z.mirror_index(9, 3, 64)
    assert set(np.diff(np.nonzero(a[idx] == 4)[0]).tolist()) == {8}
    assert a[idx][3] == 0 and a[idx][2] == 1 and a[idx][11] == 8 and a[idx][12] == 7
    assert np.array_equal(Z.mirror_index(1, 5, 4), np.zeros(4))


def test_width_scales_encoder_and_decoder_and_keeps_the_grid():
    base, wide = Z.build(0), Z.build(0, 24)
    assert base.head.bias.item() == wide.head.bias.item()
    n = M.count_parameters
    assert n(base) == 2585849 and n(wide) > 2 * n(base)
    with torch.no_grad():
        x = torch.zeros(2, 1, 64, 64)
        assert wide.eval()(x).shape == base.eval()(x).shape == (2, 1, 64, 64)
