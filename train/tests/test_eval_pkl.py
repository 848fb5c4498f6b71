import numpy as np
import pandas as pd

from lungseg_train import composite as C
from lungseg_train import data as D
from lungseg_train import eval_pkl as EP


def test_composite_rows_are_512_slices_with_the_pasted_masks(tmp_path):
    d = D.synthetic_phantoms(n_patients=2, crops_per_patient=3, slices_per_patient=1, seed=5)
    bank = C.make_bank(d.crops, d.slices, "cpu", C.CROP_CANVAS, smooth=False)
    hu, mask, lung = EP.composite_rows(bank, seed=1, idx=np.arange(len(d.crops)))
    assert hu.shape == mask.shape == lung.shape == (len(d.crops), 512, 512)
    assert mask.dtype == np.int8
    # pasted unscaled (at a sub-pixel position): about as many nodule pixels as the crop has
    for i in range(len(d.crops)):
        want = int(d.crops.mask[i].sum())
        if want >= 30:
            assert abs(int(mask[i].sum()) - want) <= 0.25 * want, (i, int(mask[i].sum()), want)
    hu2, _, _ = EP.composite_rows(bank, seed=1, idx=np.arange(len(d.crops)))
    assert np.array_equal(hu, hu2)


def test_main_writes_the_mendeley_layout(tmp_path, monkeypatch):
    d = D.synthetic_phantoms(n_patients=12, crops_per_patient=2, slices_per_patient=1, seed=6)
    monkeypatch.setattr(D, "load", lambda path=None, allow_synthetic=True: d)
    out = tmp_path / "eval.pkl"
    assert EP.main(["--split", "train", "--what", "composite", "--limit", "3", "--out", str(out)]) == 0
    df = pd.read_pickle(out)
    assert list(df.columns) == ["label1", "mask", "hu_array_old", "hu_array"]
    assert len(df) == 3 and df["hu_array_old"].iloc[0].shape == (512, 512)
