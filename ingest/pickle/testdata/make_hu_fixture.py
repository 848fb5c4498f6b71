#!/usr/bin/python3
"""Writes hu_int16.pkl and hu_int16.json: the fixture of the reader's
direct float -> int16 HU path (fast.go), checked against numpy.

Run with Debian's interpreter (numpy 1.24, pandas 1.5.3) from this folder:

    /usr/bin/python3 make_hu_fixture.py

hu_int16.pkl is a Mendeley-layout DataFrame (label1, mask, hu_array_old;
protocol 4, as the dataset and the Go writer use) whose rows mix the
layouts the fast path takes (C-order little-endian float64 and float32 HU,
int8, uint8 and bool masks) with ones it leaves to the general path
(Fortran order, big-endian), and whose HU hold the rounding edge cases:
halves, the largest double below 0.5, the int16 limits, huge values, -0.0,
subnormals. hu_int16.json holds, for each row, the SHA-256 of the HU that
numpy computes independently of the Go code (rounded half away from zero,
clipped to int16, little-endian int16 bytes) and of the mask as 0/1 uint8,
plus whether the row is in the fast layout. One row holds +inf and two
have mask values other than 0 and 1, which the reader must refuse with the
general path's message. HU values outside int16 are clamped (the reader
adds a warning to the slice).
"""
import hashlib
import json
import os
import pickle

import numpy as np
import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = (24, 20)  # 480 values: several reads when the test shrinks the chunk

EDGES = [
    0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999999999999994, -0.49999999999999994,
    1.4999999999999998, -1.4999999999999998, 4503599627370495.5, 32766.5, 32767.0, 32767.49,
    32767.5, 40000.0, -32767.5, -32768.0, -32768.49, -32768.5, -40000.0, 1e300, -1e300,
    5e-324, -5e-324, 1024.0000000000002, -1024.0, 3071.0,
]


def hu_ref(hu):
    """Rounded half away from zero, clipped to int16: what the reader must give."""
    x = np.asarray(hu, dtype=np.float64)
    r = np.trunc(x)
    r = r + np.where(np.abs(x - r) >= 0.5, np.sign(x), 0.0)
    return np.clip(r, -32768, 32767).astype("<i2")


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def main():
    rng = np.random.default_rng(20261127)
    rows, meta = [], []

    def add(label, hu, mask, fast, error=None):
        rows.append({"label1": label, "mask": mask, "hu_array_old": hu})
        meta.append({"label": label, "shape": list(hu.shape), "fast": fast, "error": error,
                     "hu_int16_sha256": None if error else sha(hu_ref(hu)),
                     "mask_sha256": sha((mask != 0).astype(np.uint8))})

    def hu_values(dtype):
        hu = rng.normal(-400.0, 600.0, size=SHAPE)
        hu[::3] = np.round(hu[::3])  # integers, as CT data mostly is
        flat = hu.reshape(-1)
        edges = np.array(EDGES)
        if np.dtype(dtype).itemsize == 4:  # the float32 range: 3e38 and its smallest subnormal
            edges = np.where(np.abs(edges) > 1e38, np.sign(edges) * 3e38, edges)
            edges = np.where((edges != 0) & (np.abs(edges) < 1e-44), np.sign(edges) * 1e-45, edges)
        flat[: len(edges)] = edges
        return hu.astype(dtype)

    def mask_values(dtype, bad=False):
        m = (rng.random(SHAPE) > 0.8).astype(np.int16)
        if bad and dtype == np.int8:
            m[0, :4] = [1, -1, 2, -128]
        if bad and dtype == np.uint8:
            m[0, :3] = [1, 255, 7]
        return m.astype(dtype)

    add("LR2", hu_values("<f8"), mask_values(np.int8), True)
    add("LR3", hu_values("<f4"), mask_values(np.uint8), True)
    add("LR4A", hu_values("<f8"), mask_values(np.bool_), True)
    add("LR4B", np.asfortranarray(hu_values("<f8")), mask_values(np.int8), False)
    add("LR2", hu_values(">f8"), mask_values(np.int8), False)
    add("LR3", hu_values("<f8"), np.asfortranarray(mask_values(np.int8)), False)
    bad = hu_values("<f8")
    bad[2, 7] = np.inf
    add("LR4A", bad, mask_values(np.int8), True, error="non-finite HU value +Inf at pixel 47 (row 2, col 7)")
    # Masks of values other than 0 and 1: the fast path declines them and
    # the general path names the first.
    add("LR4B", hu_values("<f8"), mask_values(np.int8, bad=True), True,
        error="mask value -1 at pixel 1 (row 0, col 1) is not 0 or 1 (3 of 480 pixels are neither)")
    add("LR2", hu_values("<f4"), mask_values(np.uint8, bad=True), True,
        error="mask value 255 at pixel 1 (row 0, col 1) is not 0 or 1 (2 of 480 pixels are neither)")

    df = pd.DataFrame(rows)
    with open(os.path.join(HERE, "hu_int16.pkl"), "wb") as f:
        pickle.dump(df, f, protocol=4)
    back = pd.read_pickle(os.path.join(HERE, "hu_int16.pkl"))
    for i, m in enumerate(meta):  # the file holds what the digest describes
        assert sha((np.asarray(back["mask"][i]) != 0).astype(np.uint8)) == m["mask_sha256"]
        if m["hu_int16_sha256"]:
            assert sha(hu_ref(back["hu_array_old"][i])) == m["hu_int16_sha256"]
    with open(os.path.join(HERE, "hu_int16.json"), "w") as f:
        json.dump({"pandas": pd.__version__, "numpy": np.__version__, "rows": meta}, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
