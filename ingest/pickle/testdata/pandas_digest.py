"""Digest of a Mendeley-layout DataFrame pickle as pandas itself reads it.

Used by make_fixtures.py (expected.json) and by the Go tests, which run
    /usr/bin/python3 pandas_digest.py FILE.pkl
on a pickle written by the Go writer and compare the printed JSON with what
the Go reader decodes. Never run this on an untrusted pickle: pd.read_pickle
executes whatever the pickle names.
"""
import hashlib
import json
import sys

import numpy as np
import pandas as pd


def _sha(a):
    return hashlib.sha256(a.tobytes()).hexdigest()


def _label(v):
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def _cell(v):
    """Shape and digest of one array cell, or None when it is not an array."""
    if not isinstance(v, np.ndarray):
        return None
    return list(v.shape)


def digest_frame(df, protocol=None):
    out = {
        "columns": [str(c) for c in df.columns],
        "nrows": len(df),
        "rows": [],
    }
    if protocol is not None:
        out["protocol"] = protocol
    for i in range(len(df)):
        r = df.iloc[i]
        row = {"id": _label(df.index[i])}
        if "label1" in df.columns:
            v = r["label1"]
            # None and NaN (a missing value) are no label for the Go reader.
            row["label"] = "" if v is None or (isinstance(v, float) and v != v) else str(v)
        for col, key in (("mask", "mask"), ("hu_array_old", "hu"), ("hu_array", "hulung")):
            if col not in df.columns:
                continue
            v = r[col]
            row[key + "_shape"] = _cell(v)
            if not isinstance(v, np.ndarray):
                continue
            row[key + "_dtype"] = v.dtype.str
            if key == "mask":
                # The Go reader refuses values other than 0 and 1.
                row[key + "_sha256"] = _sha(np.ascontiguousarray(v != 0, dtype=np.uint8))
            else:
                row[key + "_sha256"] = _sha(np.ascontiguousarray(v, dtype="<f8"))
        out["rows"].append(row)
    return out


def digest_file(path):
    return digest_frame(pd.read_pickle(path))


if __name__ == "__main__":
    json.dump(digest_file(sys.argv[1]), sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
