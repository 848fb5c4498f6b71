"""Throughput of every architecture on the local accelerator, with PyTorch.

    python3 -m lungseg_train.gpu_probe --out probe.json

Random weights (throughput does not depend on them): images per second at
batch 32 in fp32 (TF32 off and on) and bf16 autocast, for the compact and full
models at 256x256 and the compact crop models at 128x128; the FLOPs per image
(models.count_flops) give the achieved TFLOP/s. Also records which ONNX
Runtime execution providers the machine's Python has, if any.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from . import models as M


def throughput(model, size: int, batch: int, dtype: str, iters: int, dev) -> float:
    x = torch.rand(batch, 1, size, size, device=dev)
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cuda", enabled=False)
    with torch.no_grad(), ctx:
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args(argv)
    rep = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "rows": []}
    try:
        import onnxruntime as ort  # type: ignore
        rep["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    except Exception as e:  # noqa: BLE001
        rep["onnxruntime"] = {"error": f"{type(e).__name__}: {e}"}
    if not torch.cuda.is_available():
        print(json.dumps(rep))
        return 0
    dev = torch.device("cuda")
    rep["device"] = torch.cuda.get_device_name(0)
    torch.backends.cudnn.benchmark = True
    plan = [(n, 256) for n in M.COMPACT + M.FULL] + [(n, 128) for n in M.COMPACT]
    for name, size in plan:
        m = M.build(name, size).to(dev).eval()
        flops = M.count_flops(M.build(name, size).eval(), size)
        row = {"model": name if size == 256 else name + "-crop", "size": size, "gflops_per_image": flops / 1e9}
        for dt in ("fp32", "tf32", "bf16"):
            ips = throughput(m, size, a.batch, dt, a.iters, dev)
            row[f"img_per_s_{dt}"] = round(ips, 1)
            row[f"tflops_{dt}"] = round(ips * flops / 1e12, 2)
        rep["rows"].append(row)
        print(json.dumps(row), flush=True)
        del m
        torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rep, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
