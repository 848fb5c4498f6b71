import numpy as np
import torch

from lungseg_train import composite as C
from lungseg_train import data as D


def _bank(size=128):
    d = D.synthetic_phantoms(n_patients=3, crops_per_patient=4, slices_per_patient=1, seed=2)
    return d, C.make_bank(d.crops, d.slices, "cpu", size)


def test_training_batch_is_windowed_and_binary():
    _, bank = _bank()
    g = torch.Generator()
    g.manual_seed(0)
    x, y = C.training_batch(bank, C.Rand(g, "cpu"), 6)
    assert x.shape == y.shape == (6, 1, 128, 128)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert float(y.sum()) > 0


def test_eval_composites_map_back_onto_the_crops():
    d, bank = _bank()
    ev = C.composite_eval_set(bank, seed=3)
    assert ev.x.shape[0] == len(d.crops)
    back = C.crops_back(bank, ev.y, ev.theta, ev.crop_index)
    for i in range(len(d.crops)):
        m = bank.crop_mask[i, 0] > 0.5
        if m.sum() < 30:
            continue
        b = back[i, 0] > 0.5
        dice = 2 * float((m & b).sum()) / float(m.sum() + b.sum())
        assert dice > 0.8, (i, dice)


def test_eval_sets_are_reproducible():
    _, bank = _bank()
    a = C.composite_eval_set(bank, seed=9)
    b = C.composite_eval_set(bank, seed=9)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    c = C.composite_eval_set(bank, seed=10)
    assert not torch.equal(a.x, c.x)


def test_paste_scale_follows_spacing():
    """A crop pixel of spacing s covers s/t canvas pixels (t = grid spacing)."""
    _, bank = _bank(size=256)
    i = int(torch.argmax(bank.crop_mask.flatten(1).sum(1)))
    area_native = float(bank.crop_mask[i].sum())
    g = torch.Generator()
    g.manual_seed(1)
    r = C.Rand(g, "cpu")
    hu, lung = C.chest_backgrounds(r, 1, 256)
    idx = torch.tensor([i])
    t = torch.tensor([1.4])
    _, mask, _ = C.paste(bank, r, hu, torch.zeros_like(hu), lung, idx, t, False, torch.ones(1))
    want = area_native * (float(bank.crop_spacing[i]) / 1.4) ** 2
    assert abs(float(mask.sum()) - want) / want < 0.25


def test_real_slices_become_hu_on_the_grid():
    d = D.synthetic_phantoms(n_patients=1, crops_per_patient=1, slices_per_patient=1)
    g = C.real_slices_to_grid(d.slices, 256)
    assert g["hu"].shape == (len(d.slices), 1, 256, 256)
    lung = g["lung"] > 0
    hu = g["hu"][lung]
    assert float(hu.min()) > -1000 and float(hu.max()) < 200
    assert (g["hu"][~lung] == 0).all()
    assert float(g["mask"].sum()) > 0 and (g["mask"] <= g["lung"]).all()


def test_cut_windows_places_top_left_at_centre_minus_half_and_fills_outside():
    t = torch.arange(16.0).view(1, 1, 4, 4)
    w = C.cut_windows(t, torch.tensor([0]), torch.tensor([3]), 4, -1024.0)
    # top-left (-2, 1): rows -2,-1 outside; columns 1..3 inside, column 4 outside
    assert w.shape == (1, 1, 4, 4)
    assert torch.all(w[0, 0, :2] == -1024)
    assert torch.all(w[0, 0, :, 3] == -1024)
    assert w[0, 0, 2, :3].tolist() == [1.0, 2.0, 3.0]
    assert w[0, 0, 3, :3].tolist() == [5.0, 6.0, 7.0]


def test_crop_batches_hold_nodules_near_the_centre():
    _, bank = _bank(256)
    g = torch.Generator()
    g.manual_seed(1)
    x, y = C.crop_training_batch(bank, C.Rand(g, "cpu"), 8, win=64, offset=8, aug=False)
    assert x.shape == y.shape == (8, 1, 64, 64)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert float(y.sum()) > 0


def test_crop_eval_set_keeps_the_crops_unscaled():
    d, bank = _bank(256)
    bank = C.make_bank(d.crops, d.slices, "cpu", 256, smooth=False)
    ev = C.crop_eval_set(bank, seed=4, win=128)
    assert ev.x.shape == (len(d.crops), 1, 128, 128)
    back = C.crops_back(bank, ev.y, ev.theta, ev.crop_index)
    for i in range(len(d.crops)):
        m = bank.crop_mask[i, 0] > 0.5
        b = back[i, 0] > 0.5
        # unscaled and unrotated: the mask comes back pixel for pixel
        assert torch.equal(m, b), i
    again = C.crop_eval_set(bank, seed=4, win=128)
    assert torch.equal(ev.x, again.x)


def test_blur_as_shifted_sums_equals_the_convolution():
    import torch.nn.functional as F

    from lungseg_train import composite as C

    x = torch.randn(2, 1, 40, 33)
    for peak in (True, False):
        for sig in (0.6, 1.6, 3.2):
            k = C._gauss_kernel(sig, "cpu")
            k = k if peak else k / k.sum()
            r = (k.numel() - 1) // 2
            mode = "constant" if peak else "replicate"
            ref = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
            ref = F.conv2d(F.pad(ref, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
            assert torch.allclose(C._blur(x, sig, peak), ref, atol=1e-5)


def test_background_pool_draws_flipped_copies():
    from lungseg_train import composite as C
    from lungseg_train import data as D

    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=2, slices_per_patient=1)
    bank = C.make_bank(d.crops, d.slices, "cpu", 128, False)
    g = torch.Generator()
    g.manual_seed(0)
    r = C.Rand(g, "cpu")
    pool = C.make_bg_pool(bank, r, 3, chunk=2)
    assert pool.n == 3 and pool.hu.shape == (3, 1, 128, 128)
    hu, lung, mask, real = C.pool_backgrounds(pool, r, 6)
    for i in range(6):
        assert any(torch.equal(hu[i], t) for p in pool.hu
                   for t in (p, p.flip(-1), p.flip(-2), p.flip(-1).flip(-2)))
    x, y = C.crop_training_batch(bank, r, 4, pool=pool)
    assert x.shape == (4, 1, 128, 128)
