import os
import random

import numpy as np
import pytest

from lungseg_train import data as D

HAVE_DATA = os.path.isfile(os.path.join(D.default_data_path(), "lidc", "MANIFEST.csv"))


@pytest.mark.parametrize("hu,want", [(-1350, 0.0), (-2000, 0.0), (-600, 0.5), (150, 1.0), (3000, 1.0), (-975, 0.25)])
def test_window(hu, want):
    assert D.window(np.float64(hu)) == pytest.approx(want)


def test_split_is_deterministic_disjoint_and_fixes_full_slice_patients():
    pids = [f"LIDC-IDRI-{i:04d}" for i in range(1, 120)]
    a = D.split_patients(pids)
    shuffled = pids[:]
    random.Random(3).shuffle(shuffled)
    assert D.split_patients(shuffled) == a
    sets = [set(a[s]) for s in D.SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(pids)
    for p, s in D.FULL_SLICE_SPLIT.items():
        assert p in a[s]
    others = len(pids) - len(D.FULL_SLICE_SPLIT)
    assert len(a["train"]) == round(0.8 * others) + 3
    assert len(a["val"]) == round(0.1 * others) + 1
    # the non-fixed patients are cut in sha256 order: every train patient's key sorts before every test one's
    free = lambda s: [D._hash_key(p) for p in a[s] if p not in D.FULL_SLICE_SPLIT]  # noqa: E731
    assert max(free("train")) < min(free("val")) and max(free("val")) < min(free("test"))


def test_split_data_keeps_sources_together():
    d = D.synthetic_phantoms(n_patients=10, crops_per_patient=2, slices_per_patient=1)
    parts = D.split_data(d)
    for s in D.SPLITS:
        keep = set(parts[s]["patients"])
        assert set(parts[s]["crops"].patient) <= keep
        assert set(parts[s]["slices"].patient) <= keep
    assert sum(len(parts[s]["crops"]) for s in D.SPLITS) == len(d.crops)
    assert sum(len(parts[s]["slices"]) for s in D.SPLITS) == len(d.slices)


def test_pack_roundtrip(tmp_path):
    d = D.synthetic_phantoms(n_patients=4, crops_per_patient=3, slices_per_patient=1, seed=5)
    path = str(tmp_path / "p.npz")
    size = D.save_pack(d, path)
    assert size == os.path.getsize(path) > 0
    p = D.load_pack(path)
    assert np.array_equal(p.crops.hu, d.crops.hu)
    assert np.array_equal(p.crops.mask, d.crops.mask)
    assert np.array_equal(p.crops.hw, d.crops.hw)
    assert np.allclose(p.crops.spacing, d.crops.spacing)
    assert list(p.crops.patient) == list(d.crops.patient)
    assert list(p.crops.slice_id) == list(d.crops.slice_id)
    assert np.array_equal(p.slices.mask, d.slices.mask)
    assert np.allclose(p.slices.norm.astype(np.float32), d.slices.norm, atol=2e-3)
    assert list(p.slices.patient) == list(d.slices.patient)


def test_crop_valid_marks_true_extent():
    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=2, slices_per_patient=1)
    v = d.crops.valid()
    assert np.array_equal(v.reshape(len(d.crops), -1).sum(1), d.crops.hw[:, 0] * d.crops.hw[:, 1])
    assert (d.crops.mask <= v).all()


def test_approx_hu_is_nan_outside_lung():
    d = D.synthetic_phantoms(n_patients=1, crops_per_patient=1, slices_per_patient=1)
    hu = d.slices.approx_hu()
    v = d.slices.norm
    assert np.isnan(hu[v == 0]).all()
    inside = v != 0
    assert np.allclose(hu[inside], v[inside] * D.NORM_SCALE + D.NORM_OFFSET, atol=1e-3)


@pytest.mark.skipif(not HAVE_DATA, reason="../shared/data absent")
def test_load_raw_subset():
    d = D.load_raw(D.default_data_path(), max_patients=3)
    c = d.crops
    assert len(c) > 0 and len(d.slices) > 0
    assert c.hu.min() >= -1024 and c.hu.max() <= 3071
    assert set(np.unique(c.mask)) <= {0, 1}
    assert ((c.spacing > 0.4) & (c.spacing < 1.0)).all()
    assert (c.hw <= D.CROP_PAD).all() and (c.hw >= 40).all()
    assert d.slices.norm.shape[1:] == (512, 512)
    assert set(d.slices.patient) == set(D.FULL_SLICE_SPLIT)
    # padding outside each crop is air and carries no mask
    v = c.valid()
    assert (c.hu[v == 0] == -1000).all() and (c.mask[v == 0] == 0).all()
