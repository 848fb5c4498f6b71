"""Trained weights read back out of an exported model.onnx.

torch.onnx keeps most parameter names, but folds or renames others; this
maps every tensor of a models.py network's state_dict from the graph, so
PyTorch can run the very weights that ONNX Runtime runs (the bench's PyTorch
side, and reexport). Every tensor must be found, or it raises.
"""

from __future__ import annotations

import numpy as np


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


def load_onnx_weights(model, onnx_path: str, size: int = 256) -> dict:
    """Copy the initializers of an exported model into model's tensors.

    Names that torch.onnx kept are copied by name. The rest were renamed by
    the exporter's folding and are placed from the graph:
    MatMul weights (Linear, stored transposed), Conv weights and biases with
    BatchNorm folded in (the BatchNorm that follows the Conv is then made
    an identity carrying the folded bias), the gathered relative-position
    bias of window attention (inverted through rel_index), norm parameters
    that the exporter deduplicated (read from the node inputs), and the
    scale and shift of models.InstanceNorm2d (folded to [1,C,1,1] constants
    of its Mul and Add). size is the model's input side (a forward pass
    records the module call order). Every tensor of the state_dict must be
    assigned, or this raises.
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
        model.eval()(torch.zeros(1, 1, size, size))
    for h in hooks:
        h.remove()
    after = {a: b for a, b in zip(order, order[1:])}

    def put(key, arr):
        if key not in sd:
            raise KeyError(f"no tensor {key}")
        if tuple(arr.shape) != tuple(sd[key].shape):
            raise ValueError(f"{key}: onnx {arr.shape} vs torch {tuple(sd[key].shape)}")
        new[key] = torch.from_numpy(np.array(arr, order="C", copy=True))

    for node in mp.graph.node:
        if node.op_type == "Identity":
            continue  # an alias of another initializer, recorded above
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
        elif node.op_type in ("Mul", "Add") and t == "InstanceNorm2d":
            arr = inits[ins[0]]
            if arr.size == mod.num_features:  # the scale (Mul) or shift (Add); a scalar is eps
                put(p + (".weight" if node.op_type == "Mul" else ".bias"), arr.reshape(-1))
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


def load_model_folder(folder: str):
    """The models.py network of a registry folder (card.json + model.onnx),
    with its trained weights read back: (model in eval mode, card, size)."""
    import json
    import os

    from . import models as M

    with open(os.path.join(folder, "card.json")) as f:
        card = json.load(f)
    arch, variant = card["architecture"], card.get("variant", "compact")
    spec = [n for n, s in M.SPECS.items() if s["family"] == arch and s["variant"] == variant]
    if len(spec) != 1:
        raise SystemExit(f"{folder}: no single model spec for {arch}/{variant}")
    size = int(card["input"]["height"])
    model = M.build(spec[0], size).eval()
    load_onnx_weights(model, os.path.join(folder, "model.onnx"), size)
    return model, card, size
