import numpy as np
from scipy import ndimage

from lungseg_train import composite as C
from lungseg_train import data as D
from lungseg_train import hucal as H


def _chest(seed: int):
    """A 512 slice in HU with lung texture, its lung mask, and the slice
    normalised the way vinibfr_lidc_norm is: (HU - b) / a times the mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    lung = np.zeros((512, 512), bool)
    for cx in (170, 342):
        lung |= ((xx - cx) / 95.0) ** 2 + ((yy - 250) / 150.0) ** 2 <= 1
    hu = -850 + 120 * ndimage.gaussian_filter(rng.standard_normal((512, 512)), 2) * 6
    hu += 900 * (((xx - 180) ** 2 + (yy - 240) ** 2) <= 12 ** 2)  # a nodule
    return hu.astype(np.float32), lung


def _sets(hu, lung, a, b, y, x, h, w, other=None):
    v = np.where(lung, (hu - b) / a, 0).astype(np.float32)
    crops = [hu[y:y + h, x:x + w]] + ([other] if other is not None else [])
    p = D.CROP_PAD
    chu = np.full((len(crops), p, p), -1000, np.int16)
    hw = []
    for i, c in enumerate(crops):
        ch, cw = c.shape
        y0, x0 = (p - ch) // 2, (p - cw) // 2
        chu[i, y0:y0 + ch, x0:x0 + cw] = np.round(c).astype(np.int16)
        hw.append((ch, cw))
    crops = D.CropSet(chu, np.zeros_like(chu, np.uint8), np.array(hw, np.int32),
                      np.full(len(hw), 0.7, np.float32), np.array(["P1"] * len(hw)),
                      np.array([f"n01_k{i:02d}" for i in range(len(hw))]))
    slices = D.SliceSet(v[None], np.zeros((1, 512, 512), np.uint8), np.array(["P1"]), np.array(["n00_s00"]))
    return crops, slices


def test_calibration_recovers_scale_and_offset_from_the_matching_crop():
    hu, lung = _chest(3)
    a, b = 760.0, -959.0  # patient 0007's, far from the README's 775, -835
    noise = np.random.default_rng(9).standard_normal((40, 36)).astype(np.float32) * 200 - 700
    crops, slices = _sets(hu, lung, a, b, 220, 160, 40, 36, other=noise)
    cal = H.calibrate(crops, slices)
    c = cal["P1/n00_s00"]
    assert c.how == "matched" and c.crop == "n01_k00", c
    assert c.ncc > 0.99
    assert abs(c.scale - a) < 2 and abs(c.offset - b) < 2, c
    # the bank's real slices take it: the nodule comes out in HU again, not ~120 HU too bright
    bank_cal = C.make_bank(crops, slices, "cpu", 512, smooth=False, hu_cal=cal)
    bank_readme = C.make_bank(crops, slices, "cpu", 512, smooth=False)
    got = bank_cal.real_hu[0, 0].numpy()[240, 180]
    assert abs(got - hu[240, 180]) < 3, (got, hu[240, 180])
    off = bank_readme.real_hu[0, 0].numpy()[240, 180] - hu[240, 180]
    assert abs(off) > 50, off


def test_an_unmatched_slice_keeps_the_readme_inverse():
    hu, lung = _chest(4)
    noise = np.random.default_rng(2).standard_normal((40, 40)).astype(np.float32) * 200 - 700
    crops, slices = _sets(hu, lung, 760.0, -959.0, 0, 0, 1, 1)
    crops = crops.subset([])  # no crop of the patient at all
    cal = H.calibrate(crops, slices)
    c = cal["P1/n00_s00"]
    assert c.how == "readme" and (c.scale, c.offset) == (D.NORM_SCALE, D.NORM_OFFSET)
    crops, slices = _sets(hu, lung, 760.0, -959.0, 0, 0, 1, 1, other=noise)
    crops = crops.subset([1])  # a crop of another place only
    c = H.calibrate(crops, slices)["P1/n00_s00"]
    assert c.how == "readme" and c.ncc < H.MIN_NCC
