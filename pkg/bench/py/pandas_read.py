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
import resource
import sys
import time


def peak_mb() -> float:
    """High-water RSS of this process (VmHWM). Not ru_maxrss, which Linux
    carries over exec from the parent: a helper started by a Go process
    holding models would report the Go process's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux 4.0+), so that the peak of the
    first read is not the peak of the imports."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / (1 << 20)


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
