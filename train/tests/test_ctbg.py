import os

import numpy as np
import pytest
import torch

from lungseg_train import composite as C
from lungseg_train import ctbg
from lungseg_train import data as D

CT = os.path.join(D.default_data_path(), "ct_series")
HAVE_CT = os.path.isdir(os.path.join(CT, "popi_00_141"))


def _chest(size=128):
    yy, xx = np.mgrid[0:size, 0:size]
    hu = np.full((size, size), -1000.0, np.float32)  # air around the body touches the border
    body = ((xx - 64) / 55.0) ** 2 + ((yy - 64) / 45.0) ** 2 < 1
    hu[body] = 40.0
    lungs = np.zeros_like(body)
    for cx in (40, 88):
        lungs |= ((xx - cx) / 16.0) ** 2 + ((yy - 62) / 28.0) ** 2 < 1
    hu[lungs] = -850.0
    hu[62, 40] = 50.0  # a vessel: a hole the mask fills
    return hu, lungs


def test_slice_numbers_from_file_names():
    assert ctbg.slice_number("00-slice057.dcm") == 57
    assert ctbg.slice_number("1-14.dcm") == 14
    assert ctbg.slice_number("0.dcm") == 0


def _bank(size, spacing):
    """A CTBank of one _chest slice blown up to size x size."""
    f = size // 128
    hu, lungs = _chest(128)
    hu = np.kron(hu, np.ones((f, f), np.float32))
    lung = np.kron(lungs.astype(np.float32), np.ones((f, f), np.float32))
    return ctbg.CTBank(torch.from_numpy(hu)[None, None], torch.from_numpy(lung)[None, None],
                       torch.tensor([spacing]), ["chest"])


def test_lung_mask_keeps_inner_air_fills_vessels_and_drops_outside_air():
    hu, lungs = _chest()
    m = ctbg.lung_mask(hu, erode=0)
    assert m[62, 40] and m[62, 88]
    assert not m[0, 0] and not m[64, 64]
    assert abs(int(m.sum()) - int(lungs.sum())) <= 2


def test_crop_training_batch_with_ct_backgrounds():
    ct = _bank(512, 0.8)
    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=3, slices_per_patient=1)
    bank = C.make_bank(d.crops, d.slices, "cpu", 512, False)
    g = torch.Generator()
    g.manual_seed(0)
    x, y = C.crop_training_batch(bank, C.Rand(g, "cpu"), 4, ct=ct, p_ct=1.0, aug=False)
    assert x.shape == y.shape == (4, 1, 128, 128)
    # every window is cut from the real slice: its lung values (-850 HU) are there
    lung_level = float(D.window(torch.tensor(-850.0)))
    assert all(bool(((x[i] - lung_level).abs() < 0.1).any()) for i in range(4))


@pytest.mark.skipif(not HAVE_CT, reason="no ct_series")
def test_ct_bank_leaves_out_the_mass_slices():
    b = ctbg.load_ct_bank(CT, ("popi_00_141",), step=4)
    nums = [ctbg.slice_number(n) for n in b.names]
    assert b.n > 10 and not any(52 <= k <= 72 for k in nums)
    assert float(b.spacing[0]) == pytest.approx(0.9765625)
    assert float(b.lung.mean()) > 0.03


def test_to_grid_halves_the_slice_and_doubles_the_spacing():
    ct = _bank(512, 0.8)
    g = ctbg.to_grid(ct, 256)
    assert g.hu.shape == (1, 1, 256, 256) and float(g.spacing[0]) == pytest.approx(1.6)
    assert float(g.hu[0, 0, 110, 80]) == pytest.approx(-850.0)  # inside the left lung
    n = float(ct.lung.sum()) / 4
    assert abs(float(g.lung.sum()) - n) < 0.02 * n
    with pytest.raises(ValueError):
        ctbg.to_grid(ct, 200)


def test_slice_training_batch_with_ct_backgrounds_has_real_negatives():
    ct = _bank(256, 1.6)
    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=3, slices_per_patient=1)
    bank = C.make_bank(d.crops, d.slices, "cpu", 256, True)
    g = torch.Generator()
    g.manual_seed(0)
    x, y = C.training_batch(bank, C.Rand(g, "cpu"), 16, ct=ct, p_ct=1.0, p_paste_ct=0.5, aug=False)
    assert x.shape == y.shape == (16, 1, 256, 256)
    # every image is the real slice: the body's soft tissue (40 HU) sits at the same place
    body_level = float(D.window(torch.tensor(40.0)))
    assert bool(((x[:, 0, 128, 40] - body_level).abs() < 0.1).all())
    has = y.flatten(1).amax(1) > 0
    assert 0 < int(has.sum()) < 16  # some with a pasted nodule, some real negatives
    # without ct the same call makes no use of the bank's slices' grid
    x2, _ = C.training_batch(bank, C.Rand(g, "cpu"), 2, aug=False)
    assert x2.shape == (2, 1, 256, 256)
