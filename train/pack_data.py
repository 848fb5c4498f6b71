#!/usr/bin/env python3
"""Packs the LIDC data folder into one compressed .npz for a GPU machine.

The GPU machine receives only the repository working tree, so the data
travels as this one file in the ignored folder .gpu/ (never commit it).

    /usr/bin/python3 train/pack_data.py [--data ../shared/data] [--out .gpu/lidc_pack.npz]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lungseg_train import data as D  # noqa: E402


def main(argv=None):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=D.default_data_path(), help="raw data folder (holds lidc/)")
    ap.add_argument("--out", default=os.path.join(repo, ".gpu", "lidc_pack.npz"))
    ap.add_argument("--verify", action="store_true", help="reload the pack and compare with the raw data")
    a = ap.parse_args(argv)
    t0 = time.time()
    d = D.load_raw(a.data)
    t1 = time.time()
    size = D.save_pack(d, a.out)
    t2 = time.time()
    print(f"read {len(d.crops)} crops, {len(d.slices)} full slices, {len(d.patients())} patients "
          f"in {t1 - t0:.1f}s; wrote {a.out}: {size / 2**20:.2f} MiB in {t2 - t1:.1f}s")
    if a.verify:
        p = D.load_pack(a.out)
        import numpy as np
        ok = (np.array_equal(p.crops.hu, d.crops.hu) and np.array_equal(p.crops.mask, d.crops.mask)
              and np.array_equal(p.crops.hw, d.crops.hw) and np.array_equal(p.crops.spacing, d.crops.spacing)
              and list(p.crops.patient) == list(d.crops.patient)
              and np.array_equal(p.slices.mask, d.slices.mask)
              and float(np.abs(p.slices.norm.astype(np.float32) - d.slices.norm).max()) < 2e-3 * max(1.0, float(np.abs(d.slices.norm).max())))
        print(f"verify: {'ok' if ok else 'MISMATCH'} (load {time.time() - t2:.1f}s)")
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
