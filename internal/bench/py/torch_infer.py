"""PyTorch eager inference server for `lungseg bench`.

Builds a model of train/lungseg_train/models.py, loads the weights of the
shipped model.onnx into it (lungseg_train.onnx_weights), checks the result
against the model's parity files, and then answers timing requests, one
JSON object a line, so that Go can interleave its own rounds with these:

    stdin:  {"batch": 4, "reps": 3}
    stdout: {"batch": 4, "reps": 3, "seconds": [...], "checksum": ...}

The first line written is the start-up report (torch version, threads,
parity difference, weights mapped). The inputs are read from --inputs,
float32 little-endian [N,1,H,W]; batch b takes images 0..b-1 (cycled).

    /usr/bin/python3 torch_infer.py --train-dir train --model-dir models/unetr-small \
        --inputs in.bin --n 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from procmem import peak_mb


def parity(model, model_dir: str) -> float | None:
    import torch

    pj = os.path.join(model_dir, "parity.json")
    if not os.path.exists(pj):
        return None
    with open(pj) as f:
        meta = json.load(f)
    x = np.fromfile(os.path.join(model_dir, "parity_input.bin"), "<f4").reshape(meta["input_shape"])
    y = np.fromfile(os.path.join(model_dir, "parity_output.bin"), "<f4").reshape(meta["output_shape"])
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    return float(np.abs(out - y).max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-dir", required=True, help="folder holding lungseg_train/")
    ap.add_argument("--model-dir", required=True, help="registry folder of the model (card.json, model.onnx)")
    ap.add_argument("--inputs", required=True, help="float32 [N,1,H,W] little-endian")
    ap.add_argument("--n", type=int, required=True, help="images in --inputs")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    sys.path.insert(0, os.path.abspath(a.train_dir))
    from lungseg_train import models as M
    from lungseg_train.onnx_weights import load_onnx_weights

    with open(os.path.join(a.model_dir, "card.json")) as f:
        card = json.load(f)
    h, w = card["input"]["height"], card["input"]["width"]
    model = M.build(card["name"], h).eval()
    mapped = load_onnx_weights(model, os.path.join(a.model_dir, "model.onnx"), h)
    diff = parity(model, a.model_dir)
    x = np.fromfile(a.inputs, "<f4")
    if x.size != a.n * h * w:
        raise SystemExit(f"--inputs holds {x.size} values, want {a.n}x{h}x{w}")
    x = torch.from_numpy(x.reshape(a.n, 1, h, w))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "model": card["name"],
                      "parity_max_abs_diff": diff, "weights": mapped,
                      "peak_rss_mb": peak_mb()}), flush=True)
    batches = {}
    with torch.inference_mode():
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            req = json.loads(line)
            b, reps = int(req["batch"]), int(req["reps"])
            if b not in batches:
                idx = [i % a.n for i in range(b)]
                batches[b] = x[idx].contiguous()
            xb = batches[b]
            secs = []
            s = 0.0
            for _ in range(reps):
                t = time.perf_counter()
                y = model(xb)
                secs.append(time.perf_counter() - t)
                s += float(y[0, 0, 128, 128])
            print(json.dumps({"batch": b, "reps": reps, "seconds": secs, "checksum": s,
                              "peak_rss_mb": peak_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
