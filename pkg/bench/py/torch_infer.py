"""PyTorch eager inference server for `lungseg bench`.

Builds a model of train/lungseg_train/models.py, loads the weights of the
shipped model.onnx into it (see load_onnx_weights), checks the result
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


def peak_mb() -> float:
    """High-water RSS of this process (VmHWM). Not ru_maxrss, which Linux
    carries over exec from the parent: a helper started by a Go process
    holding models would report the Go process's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def module_path(node_name: str, modules) -> str | None:
    """Module of an exported node from its scope name.

    torch.onnx names nodes "/encoder1/proj/proj.1/InstanceNormalization":
    each scope segment after the first repeats its parent's local name as a
    prefix for containers ("proj" then "proj.1"), so "encoder1.proj.1".
    """
    segs = [s for s in node_name.split("/") if s][:-1]
    path: list[str] = []
    for s in segs:
        if path and s.startswith(path[-1] + "."):
            path[-1] = s
        else:
            path.append(s)
    while path:
        p = ".".join(path)
        if p in modules:
            return p
        # a child called directly from a parent's forward (ResNetUNet calls
        # encoder.conv1 itself) is scoped without the parent: take the
        # shortest module path ending in it
        ends = sorted((m for m in modules if m.endswith("." + p)), key=lambda m: (m.count("."), m))
        if ends:
            return ends[0]
        path.pop()
    return None


def load_onnx_weights(model, onnx_path: str) -> dict:
    """Copy the initializers of an exported model into model's tensors.

    Names that torch.onnx kept are copied by name. The rest were renamed by
    the exporter's folding and are placed from the graph:
    MatMul weights (Linear, stored transposed), Conv weights and biases with
    BatchNorm folded in (the BatchNorm that follows the Conv is then made
    an identity carrying the folded bias), the gathered relative-position
    bias of window attention (inverted through rel_index), and norm
    parameters that the exporter deduplicated (read from the node inputs).
    Every tensor of the state_dict must be assigned, or this raises.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    mp = onnx.load(onnx_path)
    inits = {i.name: numpy_helper.to_array(i) for i in mp.graph.initializer}
    # the exporter turns equal parameters into Identity nodes of one
    for node in mp.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    sd = model.state_dict()
    modules = dict(model.named_modules())
    new = {}
    for k, v in sd.items():
        if k in inits and tuple(inits[k].shape) == tuple(v.shape):
            new[k] = torch.from_numpy(inits[k].copy())

    # Module call order, to find the BatchNorm after each Conv.
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
             for n, m in modules.items() if len(list(m.children())) == 0]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, 256, 256))
    for h in hooks:
        h.remove()
    after = {a: b for a, b in zip(order, order[1:])}

    def put(key, arr):
        if key not in sd:
            raise KeyError(f"no tensor {key}")
        if tuple(arr.shape) != tuple(sd[key].shape):
            raise ValueError(f"{key}: onnx {arr.shape} vs torch {tuple(sd[key].shape)}")
        new[key] = torch.from_numpy(np.ascontiguousarray(arr))

    for node in mp.graph.node:
        ins = [i for i in node.input if i in inits and i not in sd]
        if not ins:
            # deduplicated norm parameters keep another tensor's name
            if node.op_type in ("InstanceNormalization", "LayerNormalization", "BatchNormalization"):
                p = module_path(node.name, modules)
                if p is not None:
                    for key, i in ((p + ".weight", 1), (p + ".bias", 2)):
                        if key in sd and key not in new and len(node.input) > i and node.input[i] in inits:
                            put(key, inits[node.input[i]])
            continue
        p = module_path(node.name, modules)
        if p is None:
            raise ValueError(f"node {node.name}: no module for its scope")
        mod = modules[p]
        t = type(mod).__name__
        if node.op_type == "MatMul" and t == "Linear":
            put(p + ".weight", inits[ins[0]].T)
        elif node.op_type == "Conv" and t == "Conv2d":
            w = inits[node.input[1]]
            b = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else None
            bn = after.get(p)
            if p + ".weight" not in new:
                put(p + ".weight", w)
            if bn is not None and type(modules[bn]).__name__ == "BatchNorm2d" and bn + ".running_mean" not in new:
                eps = modules[bn].eps
                c = w.shape[0]
                put(bn + ".weight", np.ones(c, np.float32))
                put(bn + ".bias", b if b is not None else np.zeros(c, np.float32))
                put(bn + ".running_mean", np.zeros(c, np.float32))
                put(bn + ".running_var", np.full(c, 1 - eps, np.float32))
                if mod.bias is not None:
                    put(p + ".bias", np.zeros(c, np.float32))
            elif b is not None and mod.bias is not None and p + ".bias" not in new:
                put(p + ".bias", b)
        elif node.op_type == "Reshape" and t == "WindowAttention":
            g = inits[ins[0]].reshape(-1, mod.heads)  # rel_bias[rel_index]
            table = np.zeros(tuple(sd[p + ".rel_bias"].shape), np.float32)
            seen = np.zeros(table.shape[0], bool)
            idx = mod.rel_index.numpy()
            table[idx] = g
            seen[idx] = True
            if not seen.all():
                raise ValueError(f"{p}: relative bias table not covered")
            put(p + ".rel_bias", table)
        else:
            raise ValueError(f"node {node.name} ({node.op_type}) of {p} ({t}): unmapped initializers {ins}")
    for k, v in sd.items():
        if k not in new and k.endswith("num_batches_tracked"):
            new[k] = v
    left = [k for k in sd if k not in new]
    if left:
        raise ValueError(f"{len(left)} tensors not found in the onnx model: {left[:5]}")
    model.load_state_dict(new)
    return {"by_name": sum(1 for k in sd if k in inits), "total": len(sd)}


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

    with open(os.path.join(a.model_dir, "card.json")) as f:
        card = json.load(f)
    h, w = card["input"]["height"], card["input"]["width"]
    model = M.build(card["name"], h).eval()
    mapped = load_onnx_weights(model, os.path.join(a.model_dir, "model.onnx"))
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
