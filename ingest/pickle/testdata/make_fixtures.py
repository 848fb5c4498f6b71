#!/usr/bin/python3
"""Writes the small Mendeley-layout pickles the Go tests read.

The "Lung cancer segmentation dataset with Lung-RADS class" (Mendeley Data)
ships lung_cancer_train.pkl / lung_cancer_test.pkl: a pandas DataFrame, one
row per CT slice, with object columns label1 (str), mask (int8 0/1 array),
hu_array_old (float HU array) and hu_array (HU times a lung mask). These
fixtures copy that layout at 16x16 (some 12x20) so they stay small.

Run with Debian's interpreter (numpy 1.24, pandas 1.5.3) from this folder:

    /usr/bin/python3 make_fixtures.py

It writes *.pkl and expected.json, the digest of every readable fixture as
pd.read_pickle itself returns it (see pandas_digest.py). Output is
deterministic for a given pandas/numpy version.
"""
import copyreg
import json
import os
import pickle

import numpy as np
import pandas as pd

from pandas_digest import digest_file

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = ["LR2", "LR3", "LR4A", "LR4B"]


def blob(rng, shape):
    """A filled ellipse at a random place: a nodule-like 0/1 int8 mask."""
    r, c = np.mgrid[0 : shape[0], 0 : shape[1]]
    cy, cx = rng.uniform(0.3, 0.7) * shape[0], rng.uniform(0.3, 0.7) * shape[1]
    ry, rx = rng.uniform(1.5, shape[0] / 4), rng.uniform(1.5, shape[1] / 4)
    return ((((r - cy) / ry) ** 2 + ((c - cx) / rx) ** 2) <= 1).astype(np.int8)


def make_rows(rng, n, shape=(16, 16), hu_dtype=np.float64, fortran=False):
    rows = []
    for i in range(n):
        hu = rng.normal(-500.0, 450.0, size=shape).astype(hu_dtype)
        # A few exact values to pin rounding: .5 cases and the int16 edges.
        hu.flat[0] = -1024.0
        hu.flat[1] = 2.5
        hu.flat[2] = -2.5
        mask = blob(rng, shape)
        lung = (rng.random(shape) > 0.3).astype(hu_dtype)
        hul = (hu * lung).astype(hu_dtype)
        if fortran:
            hu, mask, hul = np.asfortranarray(hu), np.asfortranarray(mask), np.asfortranarray(hul)
        rows.append({"label1": LABELS[i % 4], "mask": mask, "hu_array_old": hu, "hu_array": hul})
    return rows


def save(name, obj, protocol):
    path = os.path.join(HERE, name)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


class LyingArray:
    """Pickles as numpy does, but declares a shape its data does not have."""

    def __init__(self, shape, data):
        self.shape, self.data = shape, data

    def __reduce__(self):
        return (
            np.core.multiarray._reconstruct,
            (np.ndarray, (0,), b"b"),
            (1, self.shape, np.dtype("<f8"), False, self.data),
        )


class StrArray:
    """Pickles as numpy does, with the data as a str rather than bytes
    (numpy's __setstate__ accepts it, taking each character as a byte)."""

    def __init__(self, shape, dtype, text):
        self.shape, self.dtype, self.text = shape, dtype, text

    def __reduce__(self):
        return (
            np.core.multiarray._reconstruct,
            (np.ndarray, (0,), b"b"),
            (1, self.shape, self.dtype, False, self.text),
        )


class LegacyFrame:
    """Pickles a frame as pandas before 1.4 did: NEWOBJ on DataFrame and
    BlockManager, the manager's state being the "0.14.1" tuple (which
    pandas 1.5 and 2.x still read)."""

    def __init__(self, df):
        self.df = df

    @property
    def __class__(self):  # the pickler checks NEWOBJ's class against this
        return pd.DataFrame

    def __reduce_ex__(self, protocol):
        mgr = self.df._mgr
        axes = list(mgr.axes)
        blocks = [{"values": b.values, "mgr_locs": b.mgr_locs.indexer} for b in mgr.blocks]
        state = (
            axes,
            [b["values"] for b in blocks],
            [mgr.items[b.mgr_locs.indexer] for b in mgr.blocks],
            {"0.14.1": {"axes": axes, "blocks": blocks}},
        )
        return (copyreg.__newobj__, (pd.DataFrame,), {"_mgr": LegacyManager(state), "_typ": "dataframe"})


class LegacyManager:
    def __init__(self, state):
        self.state = state

    @property
    def __class__(self):
        return type(pd.DataFrame()._mgr)

    def __reduce_ex__(self, protocol):
        return (copyreg.__newobj__, (type(pd.DataFrame()._mgr),), self.state)


class Evil:
    """Reduces to os.system: a reader that calls globals would run a shell."""

    def __reduce__(self):
        return (os.system, ("echo this pickle ran a shell command",))


def main():
    expected = {}
    readable = []

    def good(name, df, protocol):
        save(name, df, protocol)
        readable.append((name, protocol))

    # The main matrix: every protocol, float64 and float32 HU.
    for proto in (2, 3, 4, 5):
        for dt, tag in ((np.float64, "f8"), (np.float32, "f4")):
            rng = np.random.default_rng(1000 * proto + (8 if tag == "f8" else 4))
            good("p%d_%s.pkl" % (proto, tag), pd.DataFrame(make_rows(rng, 4, hu_dtype=dt)), proto)

    rng = np.random.default_rng(7)
    # Row labels that are not a RangeIndex: integers (Int64Index in pandas
    # 1.5) as left by filtering, and strings.
    df = pd.DataFrame(make_rows(rng, 4), index=[3, 7, 12, 40])
    good("p4_int_index.pkl", df, 4)
    df = pd.DataFrame(make_rows(rng, 4), index=["case_a", "case_b", "case_c", "case_d"])
    good("p2_str_index.pkl", df, 2)

    # Float labels (Float64Index) and labels too long to inline, non-ASCII.
    rows = make_rows(rng, 4)
    rows[1]["label1"] = "LR3 " + "\u00e9\u4e2d" * 100
    rows[2]["label1"] = "LR4A-\u00e9"
    df = pd.DataFrame(rows, index=[0.5, 3.0, 1e16, -2.5e-05])
    good("p3_float_index.pkl", df, 3)

    # Non-square Fortran-ordered cells in an object block built from a 2-D
    # object array (the block itself is then Fortran-ordered too).
    rows = make_rows(rng, 4, shape=(12, 20), fortran=True)
    cols = ["label1", "mask", "hu_array_old", "hu_array"]
    grid = np.empty((4, 4), dtype=object)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            grid[i, j] = r[c]
    df = pd.DataFrame(grid, columns=cols)
    assert df._mgr.blocks[0].values.flags.f_contiguous
    good("p4_fortran.pkl", df, 4)
    good("p5_fortran.pkl", df, 5)

    # Unconsolidated frame: one block per added column, columns reordered.
    rows = make_rows(rng, 3)
    df = pd.DataFrame({"hu_array": [r["hu_array"] for r in rows]})
    df["mask"] = [r["mask"] for r in rows]
    df["label1"] = [r["label1"] for r in rows]
    df["hu_array_old"] = [r["hu_array_old"] for r in rows]
    assert df._mgr.nblocks > 1, df._mgr
    good("p4_split_blocks.pkl", df, 4)

    # Extra numeric columns between the object ones: the object block's
    # placement is then an int64 array, not a slice.
    rows = make_rows(rng, 4)
    df = pd.DataFrame(rows)
    df.insert(1, "slice_no", np.arange(4, dtype=np.int64) * 5)
    df["spacing"] = 0.7
    assert not isinstance(df._mgr.blocks[0].mgr_locs.indexer, slice) or not isinstance(
        df._mgr.blocks[-1].mgr_locs.indexer, slice
    ), df._mgr
    good("p4_extra_columns.pkl", df, 4)
    good("p2_extra_columns.pkl", df, 2)

    # The pre-1.4 BlockManager state.
    df = pd.DataFrame(make_rows(rng, 3))
    good("p2_legacy_manager.pkl", LegacyFrame(df), 2)
    good("p5_legacy_manager.pkl", LegacyFrame(df), 5)

    # Every supported dtype, both byte orders.
    variants = [
        (np.bool_, np.int16),
        (np.uint8, np.uint16),
        (np.int8, np.int32),
        (np.int16, np.int64),
        (np.int32, ">f8"),
        (np.int64, ">i2"),
        (np.uint16, ">f4"),
        (np.int8, np.uint8),
        (np.int8, np.int8),
    ]
    rows = []
    for i, (mdt, hdt) in enumerate(variants):
        hu = rng.normal(0, 60, size=(16, 16))
        if np.dtype(hdt).kind == "u":
            hu = np.abs(hu)
        if np.dtype(hdt).kind in "iu":
            hu = np.round(hu)
        hu = hu.astype(hdt)
        mask = blob(rng, (16, 16)).astype(mdt)
        if i == 1:
            mask = mask * 3  # values other than 0 and 1: the reader refuses the row
        rows.append({"label1": LABELS[i % 4], "mask": mask, "hu_array_old": hu, "hu_array": hu})
    good("p2_dtypes.pkl", pd.DataFrame(rows), 2)
    good("p5_dtypes.pkl", pd.DataFrame(rows), 5)

    # Broken inputs. Rows that pandas can read go into expected.json too,
    # so the Go test checks the good rows of these files as well.
    rng = np.random.default_rng(99)
    rows = make_rows(rng, 4)
    rows[1]["mask"] = blob(rng, (8, 8))
    good("broken_mask_shape.pkl", pd.DataFrame(rows), 4)

    rows = make_rows(rng, 4)
    rows[2]["hu_array_old"][3, 5] = np.nan
    good("broken_nan.pkl", pd.DataFrame(rows), 4)

    rows = make_rows(rng, 4)
    rows[3]["hu_array_old"] = rows[3]["hu_array_old"].reshape(1, 16, 16)
    good("broken_ndim3.pkl", pd.DataFrame(rows), 3)

    rows = make_rows(rng, 4)
    rows[1]["mask"] = None
    good("broken_cell_none.pkl", pd.DataFrame(rows), 4)

    rows = make_rows(rng, 3)
    for r in rows:
        del r["hu_array_old"]
    good("broken_missing_column.pkl", pd.DataFrame(rows), 4)

    # Not readable by pandas (or not safely): no expected digest.
    rows = make_rows(rng, 3)
    rows[0]["hu_array_old"] = LyingArray((100000, 100000), b"\0" * 64)
    save("broken_huge_shape.pkl", pd.DataFrame(rows), 4)

    rows = make_rows(rng, 3)
    rows[2]["hu_array"] = Evil()
    save("broken_unknown_class.pkl", pd.DataFrame(rows), 4)

    with open(os.path.join(HERE, "p4_f8.pkl"), "rb") as f:
        b = f.read()
    with open(os.path.join(HERE, "broken_truncated.pkl"), "wb") as f:
        f.write(b[: len(b) // 2])

    save("broken_not_frame.pkl", {"label1": "LR2", "rows": [1, 2, 3]}, 4)

    # What an outside probe found accepted without a word (issue 15).
    rng = np.random.default_rng(15)
    # Masks must be 0/1: bool, integers, or floats exactly 0.0 and 1.0.
    rows = make_rows(rng, 6)
    rows[0]["mask"] = rows[0]["mask"].astype(np.float64)  # 0.0/1.0: fine
    rows[1]["mask"] = rows[1]["mask"].astype(np.float64)
    rows[1]["mask"][2, 3] = 0.5
    rows[2]["mask"][4, 4] = 2
    rows[3]["mask"][0, 1] = -1
    rows[4]["mask"] = rows[4]["mask"].astype(np.float32)
    rows[4]["mask"][5, 6] = -1.0
    rows[5]["mask"] = rows[5]["mask"].astype(np.bool_)  # fine
    good("broken_mask_values.pkl", pd.DataFrame(rows), 4)

    # HU beyond int16: clamped with a warning; a row with nothing else is
    # an error.
    rows = make_rows(rng, 3)
    rows[1]["hu_array_old"][3, 4] = 1e12
    rows[1]["hu_array_old"][5, 6] = -1e12
    rows[2]["hu_array_old"][:, :] = -1e12
    good("broken_hu_range.pkl", pd.DataFrame(rows), 4)

    # label1 that is not a str: an int, None, NaN, a float.
    rows = make_rows(rng, 5)
    for r, v in zip(rows, ["LR2", 3, None, float("nan"), 2.5]):
        r["label1"] = v
    good("broken_labels.pkl", pd.DataFrame(rows), 4)

    # Array data as a str (numpy takes its characters as latin1 bytes), at
    # protocol 4: the mask of row 1.
    rows = make_rows(rng, 3)
    m = rows[1]["mask"]
    rows[1]["mask"] = StrArray(m.shape, m.dtype, m.tobytes().decode("latin1"))
    good("p4_str_data.pkl", pd.DataFrame(rows), 4)
    # ... and one with a character numpy cannot turn into a byte.
    rows = make_rows(rng, 3)
    rows[1]["mask"] = StrArray((16, 16), np.dtype("i1"), "\u0100" + "\x00" * 255)
    save("broken_str_data.pkl", pd.DataFrame(rows), 4)

    # Two mask columns: which one is the truth cannot be told.
    rows = make_rows(rng, 3)
    df = pd.DataFrame(rows)
    df.insert(4, "dup", [r["mask"] for r in rows])
    df.columns = ["label1", "mask", "hu_array_old", "hu_array", "mask"]
    save("broken_duplicate_mask.pkl", df, 4)

    for name, proto in readable:
        d = digest_file(os.path.join(HERE, name))
        d["protocol"] = proto
        expected[name] = d
    expected["_generator"] = {"pandas": pd.__version__, "numpy": np.__version__}
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
