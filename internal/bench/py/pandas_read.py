"""pandas read_pickle server for `lungseg bench`.

Reads the DataFrame pickle --file with pd.read_pickle and touches every
row's arrays (the HU column as float64, the mask), as lungseg's pickle
reader decodes every row. Answers one JSON object a line:

    stdin:  {"reps": 1}
    stdout: {"reps": 1, "seconds": [...], "rows": N, "checksum": ...,
             "baseline_rss_mb": ..., "peak_rss_mb": ...}

The first line written is the start-up report. peak_rss_mb is the
process's high-water RSS (VmHWM), baseline_rss_mb its RSS before the
first read, after imports. Run one process per file so that each file's
peak is its own.
"""

from __future__ import annotations

import json
import sys
import time

from procmem import peak_mb, reset_peak, rss_mb


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    a = ap.parse_args()
    import numpy as np
    import pandas as pd

    reset_peak()
    base = rss_mb()
    print(json.dumps({"pandas": pd.__version__, "numpy": np.__version__, "baseline_rss_mb": base}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        reps = int(json.loads(line)["reps"])
        secs = []
        s = 0.0
        rows = 0
        for _ in range(reps):
            t = time.perf_counter()
            df = pd.read_pickle(a.file)
            rows = len(df)
            for hu, mask in zip(df["hu_array_old"], df["mask"]):
                s += float(np.asarray(hu)[0, 0]) + float(np.asarray(mask)[0, 0])
            del df
            secs.append(time.perf_counter() - t)
        print(json.dumps({"reps": reps, "seconds": secs, "rows": rows, "checksum": s, "baseline_rss_mb": base,
                          "peak_rss_mb": peak_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
