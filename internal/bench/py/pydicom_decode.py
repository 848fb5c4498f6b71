"""pydicom decoding server for `lungseg bench`.

Reads the DICOM files named in --files (one path a line) to HU arrays,
as lungseg's dicomio.ReadFile does: dcmread, pixel_array, modality LUT
(RescaleSlope/RescaleIntercept). Answers one JSON object a line:

    stdin:  {"reps": 1}
    stdout: {"reps": 1, "seconds": [...], "files": N, "checksum": ...,
             "baseline_rss_mb": ..., "peak_rss_mb": ...}

The first line written is the start-up report. peak_rss_mb is the
process's high-water RSS (VmHWM), baseline_rss_mb its RSS before the
first read, after imports.
"""

from __future__ import annotations

import json
import sys
import time

from procmem import peak_mb, reset_peak, rss_mb


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--files", required=True)
    a = ap.parse_args()
    import numpy as np
    import pydicom
    from pydicom.pixel_data_handlers.util import apply_modality_lut

    with open(a.files) as f:
        files = [l.strip() for l in f if l.strip()]
    reset_peak()
    base = rss_mb()
    print(json.dumps({"pydicom": pydicom.__version__, "numpy": np.__version__, "files": len(files),
                      "baseline_rss_mb": base}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        reps = int(json.loads(line)["reps"])
        secs = []
        s = 0.0
        for _ in range(reps):
            t = time.perf_counter()
            for p in files:
                ds = pydicom.dcmread(p)
                hu = apply_modality_lut(ds.pixel_array, ds)
                s += float(hu[0, 0])
            secs.append(time.perf_counter() - t)
        print(json.dumps({"reps": reps, "seconds": secs, "files": len(files), "checksum": s,
                          "baseline_rss_mb": base,
                          "peak_rss_mb": peak_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
