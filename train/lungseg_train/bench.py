"""CPU forward time per 256x256 image (batch 1), parameters, FLOPs, ONNX size.

    cd train && /usr/bin/python3 -m lungseg_train.bench [--models a,b] [--threads 2] [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from . import export as E
from . import models as M


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(M.COMPACT))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, load average {os.getloadavg()[0]:.2f}")
    print("model                  params     GFLOPs  onnx_MB  fwd_ms_median  fwd_ms_min")
    for name in a.models.split(","):
        torch.manual_seed(0)
        m = M.build(name, a.size).eval()
        x = torch.rand(1, 1, a.size, a.size)
        with torch.no_grad():
            m(x)
            ts = []
            for _ in range(a.reps):
                t = time.perf_counter()
                m(x)
                ts.append((time.perf_counter() - t) * 1000)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "m.onnx")
            E.export_onnx(m, p, a.size)
            mb = os.path.getsize(p) / 1e6
        print(f"{name:22s} {M.count_parameters(m):9d} {M.count_flops(m, a.size) / 1e9:8.2f} {mb:8.1f} "
              f"{statistics.median(ts):13.1f} {min(ts):11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
