"""Static int8 quantisation of a shipped model: ONNX QDQ, calibrated on real
training crops, per-channel weights (issue 19).

    cd train && /usr/bin/python3 -m lungseg_train.quantize ../models/resnet50-unet-small-crop \\
        --data ../.gpu/lidc_pack.npz --out ../models --threads 2

No quantisation tool is installed (no onnxruntime for Python), so this does
what onnxruntime.quantization's QDQ mode does for a convolutional network,
on the graph itself:

* A Relu that is the only consumer of a Conv or Add output is removed and
  that output is quantised to uint8 with zero point 0: QuantizeLinear then
  clamps negatives to 0, which is the Relu (ORT's "removable activation").
* Every other activation (graph input and each node output but the graph's
  outputs) gets a QuantizeLinear -> DequantizeLinear pair, uint8,
  asymmetric, its range the min/max seen on the calibration crops; its
  consumers read the DequantizeLinear output.
* Conv weights become int8 initializers, symmetric, one scale per output
  channel, behind a DequantizeLinear (axis 0); Conv biases int32 with scale
  input scale x weight scale (what QLinearConv needs). ConvTranspose keeps
  float weights (its quantised activations around it still are).

ONNX Runtime then fuses DQ -> Conv -> Q into QLinearConv (and the same for
Add, Concat, MaxPool) when it loads the model.

A graph with any other op (the Swin-UNet, the UNETR) is quantised only
around its weighted ops, as onnxruntime.quantization treats transformers
(quantize_weighted_ops): MatMul with a constant [K, N] weight (int8 per
output column, its input uint8, its output float: MatMulIntegerToFloat in
ONNX Runtime) and Conv as above; LayerNorm, Softmax, Gelu, the residual Adds
and the attention's activation x activation MatMuls stay float. The calibration set is
training-split bare crops (padded with air like the cascade's windows); the
validation and test patients are never seen. The float graph is run by a
small PyTorch interpreter of the ONNX graph (interpret), the same one that
checks the quantised graph (fake-quantised) before it is written.

Writes OUT/<name>-int8/{model.onnx,card.json,parity.json,parity_*.bin},
where <name> is the float model's name with "-crop" kept last
(resnet50-unet-small-crop -> resnet50-unet-small-int8-crop), so the cascade
"resnet50-unet-small-int8+crop" pairs the two int8 models.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

CONV_OPS = {"Conv", "ConvTranspose", "Relu", "Add", "Concat", "MaxPool", "Identity"}
# The transformer graphs (Swin-UNet, UNETR) add these.
TRANSFORMER_OPS = {"MatMul", "Mul", "Sub", "Div", "Pow", "Sqrt", "Erf", "Softmax", "LayerNormalization", "ReduceMean",
                   "LeakyRelu", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Gather", "Slice", "Shape", "Cast",
                   "Constant"}
SUPPORTED = CONV_OPS | TRANSFORMER_OPS | {"QuantizeLinear", "DequantizeLinear"}

_CAST = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
         9: torch.bool, 11: torch.float64}


def _attrs(node) -> Dict[str, object]:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _sym_pad(x: torch.Tensor, pads) -> tuple:
    """torch wants symmetric padding: pads (t, l, b, r) -> (x padded, (ph, pw))."""
    t, l, b, r = pads
    if t == b and l == r:
        return x, (t, l)
    return F.pad(x, (l, r, t, b)), (0, 0)


def _qparams(env, node, i):
    s = env[node.input[1]]
    zp = env[node.input[2]] if len(node.input) > 2 and node.input[2] else torch.zeros_like(s)
    return s, zp


def _bshape(v: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    if v.dim() == 0:
        return v
    shape = [1] * x.dim()
    shape[axis] = -1
    return v.reshape(shape)


def interpret(model, x: torch.Tensor, record: Optional[Callable[[str, torch.Tensor], None]] = None) -> torch.Tensor:
    """Runs an ONNX graph made of SUPPORTED ops on x with PyTorch (float;
    Quantize/DequantizeLinear simulated exactly: round half to even, clamp)."""
    from onnx import numpy_helper
    g = model.graph
    env: Dict[str, torch.Tensor] = {}
    for init in g.initializer:
        a = numpy_helper.to_array(init)
        # Integer initializers keep their type (shape arithmetic, Gather
        # indices); Quantize/DequantizeLinear read zero points as doubles.
        env[init.name] = torch.from_numpy(a.astype(np.int64 if a.dtype == np.uint64 else a.dtype, copy=True))
    env[g.input[0].name] = x
    qranges = _qranges(model)
    for n in g.node:
        op, at = n.op_type, _attrs(n)
        if op not in SUPPORTED:
            raise SystemExit(f"quantize: op {op} ({n.name}) is not supported by this interpreter")
        ins = [env[i] if i else None for i in n.input]
        if op == "Conv":
            xx, pad = _sym_pad(ins[0], at.get("pads", [0, 0, 0, 0]))
            out = F.conv2d(xx, ins[1].float(), None if len(ins) < 3 else ins[2].float(), stride=tuple(at.get("strides", [1, 1])),
                           padding=pad, dilation=tuple(at.get("dilations", [1, 1])), groups=int(at.get("group", 1)))
        elif op == "ConvTranspose":
            pads = at.get("pads", [0, 0, 0, 0])
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise SystemExit(f"quantize: asymmetric ConvTranspose pads in {n.name}")
            out = F.conv_transpose2d(ins[0], ins[1].float(), None if len(ins) < 3 else ins[2].float(),
                                     stride=tuple(at.get("strides", [1, 1])), padding=(pads[0], pads[1]),
                                     output_padding=tuple(at.get("output_padding", [0, 0])),
                                     groups=int(at.get("group", 1)), dilation=tuple(at.get("dilations", [1, 1])))
        elif op == "Relu":
            out = F.relu(ins[0])
        elif op == "Identity":
            out = ins[0]
        elif op == "Add":
            out = ins[0] + ins[1]
        elif op == "Concat":
            out = torch.cat(ins, dim=int(at["axis"]))
        elif op == "MaxPool":
            xx, pad = _sym_pad(ins[0], at.get("pads", [0, 0, 0, 0]))
            if pad == (0, 0) and any(at.get("pads", [0])):
                xx = F.pad(ins[0], (at["pads"][1], at["pads"][3], at["pads"][0], at["pads"][2]), value=-float("inf"))
            out = F.max_pool2d(xx, tuple(at["kernel_shape"]), stride=tuple(at.get("strides", [1, 1])), padding=pad,
                               ceil_mode=bool(at.get("ceil_mode", 0)))
        elif op in TRANSFORMER_OPS:
            out = _transformer_op(op, at, ins, n)
        elif op == "QuantizeLinear":
            s, zp = ins[1], ins[2]
            axis = int(at.get("axis", 1))
            lo, hi = qranges[n.input[2]]
            q = torch.round(ins[0].double() / _bshape(s.double(), ins[0], axis)) + _bshape(zp.double(), ins[0], axis)
            out = q.clamp(lo, hi)
        else:  # DequantizeLinear
            s, zp = ins[1], ins[2]
            axis = int(at.get("axis", 1))
            out = ((ins[0].double() - _bshape(zp.double(), ins[0], axis)) * _bshape(s.double(), ins[0], axis)).float()
        env[n.output[0]] = out
        if record is not None:
            record(n.output[0], out)
    return env[g.output[0].name]


def _transformer_op(op: str, at: Dict[str, object], ins: List[Optional[torch.Tensor]], node) -> torch.Tensor:
    """The ops of the exported Swin-UNet and UNETR graphs, with ONNX's
    semantics (integer tensors stay integer: the exporter's shape
    arithmetic)."""
    from onnx import numpy_helper
    x = ins[0] if ins else None
    if op == "MatMul":
        return torch.matmul(x, ins[1])
    if op == "Mul":
        return x * ins[1]
    if op == "Sub":
        return x - ins[1]
    if op == "Div":
        if x.is_floating_point():
            return x / ins[1]
        return torch.div(x, ins[1], rounding_mode="trunc")
    if op == "Pow":
        return torch.pow(x, ins[1])
    if op == "Sqrt":
        return torch.sqrt(x)
    if op == "Erf":
        return torch.erf(x)
    if op == "Softmax":
        return torch.softmax(x, dim=int(at.get("axis", -1)))
    if op == "LeakyRelu":
        return F.leaky_relu(x, float(at.get("alpha", 0.01)))
    if op == "LayerNormalization":
        axis = int(at.get("axis", -1)) % x.dim()
        shape = tuple(x.shape[axis:])
        w = ins[1].expand(shape) if ins[1] is not None else None
        b = ins[2].expand(shape) if len(ins) > 2 and ins[2] is not None else None
        return F.layer_norm(x, shape, w, b, eps=float(at.get("epsilon", 1e-5)))
    if op == "ReduceMean":
        axes = at.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in ins[1].tolist()]
        keep = bool(at.get("keepdims", 1))
        if not axes:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return torch.mean(x, dim=[int(a) for a in axes], keepdim=keep)
    if op == "Reshape":
        shape = [int(v) for v in ins[1].tolist()]
        if not at.get("allowzero", 0):
            shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
        return x.reshape(shape)
    if op == "Transpose":
        perm = at.get("perm") or list(range(x.dim()))[::-1]
        return x.permute(*[int(p) for p in perm])
    if op in ("Unsqueeze", "Squeeze"):
        axes = at.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in ins[1].reshape(-1).tolist()]
        if op == "Squeeze":
            if axes is None:
                return x.squeeze()
            keep = [d for i, d in enumerate(x.shape) if i not in {a % x.dim() for a in axes}]
            return x.reshape(keep)
        rank = x.dim() + len(axes)
        out = x
        for a in sorted(a % rank for a in axes):
            out = out.unsqueeze(a)
        return out
    if op == "Gather":
        axis = int(at.get("axis", 0)) % x.dim()
        idx = ins[1].long()
        idx = torch.where(idx < 0, idx + x.shape[axis], idx)
        out = torch.index_select(x, axis, idx.reshape(-1))
        return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))
    if op == "Slice":
        starts, ends = ins[1].tolist(), ins[2].tolist()
        axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        sl = [slice(None)] * x.dim()
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            sl[int(ax) % x.dim()] = slice(int(st), int(en), int(sp))
        if any(sp < 0 for sp in steps):  # numpy slices as ONNX does, torch takes no negative step
            return torch.from_numpy(np.ascontiguousarray(x.numpy()[tuple(sl)]))
        return x[tuple(sl)]
    if op == "Shape":
        shape = list(x.shape)
        start, end = int(at.get("start", 0)), at.get("end")
        return torch.tensor(shape[start:] if end is None else shape[start:int(end)], dtype=torch.int64)
    if op == "Cast":
        return x.to(_CAST[int(at["to"])])
    if op == "Constant":
        if "value" in at:
            return torch.from_numpy(numpy_helper.to_array(at["value"]).copy())
        if "value_float" in at:
            return torch.tensor(float(at["value_float"]), dtype=torch.float32)
        if "value_floats" in at:
            return torch.tensor(list(at["value_floats"]), dtype=torch.float32)
        if "value_int" in at:
            return torch.tensor(int(at["value_int"]), dtype=torch.int64)
        if "value_ints" in at:
            return torch.tensor(list(at["value_ints"]), dtype=torch.int64)
    raise SystemExit(f"quantize: op {op} ({node.name}) with attributes {sorted(at)} is not supported by this interpreter")


def _qranges(model) -> Dict[str, tuple]:
    """Integer range of each zero point initializer, by its type."""
    import onnx
    kinds = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
             onnx.TensorProto.INT32: (-2 ** 31, 2 ** 31 - 1)}
    return {i.name: kinds[i.data_type] for i in model.graph.initializer if i.data_type in kinds}


def calibrate(model, batches: List[torch.Tensor]) -> Dict[str, tuple]:
    """min and max of every tensor over the calibration batches (the graph
    input included)."""
    rng: Dict[str, List[float]] = {}

    def rec(name, t):
        if not t.is_floating_point() or t.numel() == 0:  # shape arithmetic
            return
        lo, hi = float(t.min()), float(t.max())
        r = rng.get(name)
        rng[name] = [min(lo, r[0]), max(hi, r[1])] if r else [lo, hi]

    with torch.no_grad():
        for b in batches:
            rec(model.graph.input[0].name, b)
            interpret(model, b, rec)
    return {k: (v[0], v[1]) for k, v in rng.items()}


def _u8(lo: float, hi: float):
    lo, hi = min(0.0, lo), max(0.0, hi)
    scale = (hi - lo) / 255.0 or 1.0
    zp = int(round(-lo / scale))
    return np.float32(scale), np.uint8(min(255, max(0, zp)))


def _dealias(g, inits) -> None:
    """Identity nodes of initializers (the exporter's shared weights) are
    read as the initializers themselves."""
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in inits}
    if alias:
        keep = [n for n in g.node if n.output[0] not in alias]
        for n in keep:
            for k, i in enumerate(n.input):
                if i in alias:
                    n.input[k] = alias[i]
        del g.node[:]
        g.node.extend(keep)


def quantize_graph(model, ranges: Dict[str, tuple]):
    """The QDQ model of a float model (see the module doc): every
    activation quantised for a convolutional graph (Conv, ConvTranspose,
    Relu, Add, Concat, MaxPool), only the inputs of the weighted ops for any
    other (quantize_weighted_ops)."""
    if not convolutional(model):
        return quantize_weighted_ops(model, ranges)
    import copy

    import onnx
    from onnx import helper, numpy_helper

    m = copy.deepcopy(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    _dealias(g, inits)
    outputs = {o.name for o in g.output}
    consumers: Dict[str, List] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}

    # 1. Removable Relus.
    relu_out = set()
    keep = []
    for n in g.node:
        if n.op_type == "Relu":
            src = n.input[0]
            p = producer.get(src)
            if p is not None and p.op_type in ("Conv", "Add") and len(consumers.get(src, [])) == 1 and src not in outputs:
                p.output[0] = n.output[0]
                producer[n.output[0]] = p
                relu_out.add(n.output[0])
                continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)

    # 2. Activations: graph input and node outputs but graph outputs.
    acts = [g.input[0].name] + [o for n in g.node for o in n.output if o not in outputs]
    new_inits = []
    qnodes = {}
    act_scale = {}
    for t in acts:
        if t not in ranges:
            raise SystemExit(f"quantize: no calibration range for {t}")
        lo, hi = ranges[t]
        if t in relu_out:
            lo = 0.0
        s, zp = _u8(lo, hi)
        act_scale[t] = float(s)
        sn, zn = t + "_scale", t + "_zero_point"
        new_inits += [numpy_helper.from_array(np.array(s, np.float32), sn), numpy_helper.from_array(np.array(zp, np.uint8), zn)]
        qnodes[t] = [helper.make_node("QuantizeLinear", [t, sn, zn], [t + "_quantized"], name=t + "_QuantizeLinear"),
                     helper.make_node("DequantizeLinear", [t + "_quantized", sn, zn], [t + "_dequantized"], name=t + "_DequantizeLinear")]

    # 3. Conv weights (per output channel, int8) and biases (int32).
    wscales: Dict[str, np.ndarray] = {}  # a weight shared by several Convs is quantised once
    for k, n in enumerate(g.node):
        if n.op_type != "Conv":
            continue
        w_name = n.input[1]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        if w_name not in wscales:
            ws = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127.0
            ws[ws == 0] = 1.0
            wscales[w_name] = ws
            wq = np.clip(np.round(w / ws.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
            qn = w_name + "_quantized"
            new_inits += [numpy_helper.from_array(wq, qn), numpy_helper.from_array(ws.astype(np.float32), w_name + "_scale"),
                          numpy_helper.from_array(np.zeros(w.shape[0], np.int8), w_name + "_zero_point")]
            qnodes.setdefault("__weights__", []).append(helper.make_node(
                "DequantizeLinear", [qn, w_name + "_scale", w_name + "_zero_point"], [w_name + "_dequantized"],
                name=w_name + "_DequantizeLinear", axis=0))
        ws = wscales[w_name]
        n.input[1] = w_name + "_dequantized"
        if len(n.input) > 2 and n.input[2]:
            b_src = n.input[2]
            # The bias scale is this Conv's input scale times its weights':
            # a bias shared by two Convs gets one int32 copy each.
            b_name = b_src if sum(1 for x in g.node if x.op_type == "Conv" and len(x.input) > 2 and x.input[2] == b_src) == 1 \
                else f"{b_src}_{k}"
            b = numpy_helper.to_array(inits[b_src]).astype(np.float64)
            x_s = act_scale[n.input[0]]
            bs = (x_s * ws.astype(np.float64)).astype(np.float32)
            bq = np.clip(np.round(b / bs.astype(np.float64)), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            new_inits += [numpy_helper.from_array(bq, b_name + "_quantized"), numpy_helper.from_array(bs, b_name + "_scale"),
                          numpy_helper.from_array(np.zeros(w.shape[0], np.int32), b_name + "_zero_point")]
            qnodes["__weights__"].append(helper.make_node(
                "DequantizeLinear", [b_name + "_quantized", b_name + "_scale", b_name + "_zero_point"], [b_name + "_dequantized"],
                name=b_name + "_DequantizeLinear", axis=0))
            n.input[2] = b_name + "_dequantized"

    # 4. Consumers read the dequantised activations; nodes in order.
    for n in g.node:
        for k, i in enumerate(n.input):
            if i in qnodes:
                n.input[k] = i + "_dequantized"
    return _finish(m, list(qnodes.pop("__weights__", [])), list(g.node), qnodes, new_inits)


def quantize_weighted_ops(model, ranges: Dict[str, tuple], ops=("MatMul", "Conv")):
    """QDQ around the compute-heavy ops with constant weights only, as
    onnxruntime.quantization does for transformers:

    * MatMul with a 2-D initializer B [K, N]: B int8 symmetric, one scale
      per output column (DequantizeLinear axis 1), A quantised uint8
      (asymmetric, calibrated), the output left float: ONNX Runtime fuses
      DQ(A), DQ(B) -> MatMul into MatMulIntegerToFloat, whose kernel takes a
      per-column B scale. Its bias Add stays float.
    * Conv: as for the convolutional graphs: input and output uint8, weights
      int8 per output channel, bias int32 (-> QLinearConv); every consumer of
      the output reads the dequantised tensor.
    * Everything else stays float: LayerNormalization, Softmax, Gelu (Erf),
      the residual Adds, the attention's activation x activation MatMuls,
      the instance norms, LeakyRelu, and ConvTranspose (ONNX Runtime's CPU
      provider has no integer ConvTranspose).
    """
    import copy

    import onnx
    from onnx import helper, numpy_helper

    m = copy.deepcopy(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    _dealias(g, inits)
    outputs = {o.name for o in g.output}

    def weight(n):
        i = inits.get(n.input[1]) if len(n.input) > 1 and n.op_type in ops else None
        if i is None or i.data_type != onnx.TensorProto.FLOAT:
            return None
        if n.op_type == "MatMul" and len(i.dims) == 2:
            return i
        if n.op_type == "Conv" and len(i.dims) == 4:
            return i
        return None

    nodes = list(g.node)
    targets = [j for j, n in enumerate(nodes) if weight(n) is not None]
    new_inits, wdq = [], []
    act_scale: Dict[str, float] = {}
    qdq: Dict[str, List] = {}

    def quantize_act(t):
        if t in qdq:
            return
        if t not in ranges:
            raise SystemExit(f"quantize: no calibration range for {t}")
        s, zp = _u8(*ranges[t])
        act_scale[t] = float(s)
        sn, zn = t + "_scale", t + "_zero_point"
        new_inits.extend([numpy_helper.from_array(np.array(s, np.float32), sn),
                          numpy_helper.from_array(np.array(zp, np.uint8), zn)])
        qdq[t] = [helper.make_node("QuantizeLinear", [t, sn, zn], [t + "_quantized"], name=t + "_QuantizeLinear"),
                  helper.make_node("DequantizeLinear", [t + "_quantized", sn, zn], [t + "_dequantized"],
                                   name=t + "_DequantizeLinear")]

    readers: Dict[str, set] = {}  # activation -> indices of the nodes that read its DQ
    for j in targets:
        n = nodes[j]
        quantize_act(n.input[0])
        readers.setdefault(n.input[0], set()).add(j)
        if n.op_type == "Conv" and n.output[0] not in outputs:
            quantize_act(n.output[0])
            readers.setdefault(n.output[0], set()).update(c for c, x in enumerate(nodes) if n.output[0] in x.input)

    done: Dict[str, np.ndarray] = {}
    for k in targets:
        n = nodes[k]
        w_name = n.input[1]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        axis = 1 if n.op_type == "MatMul" else 0
        if w_name not in done:
            wa = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            ws = np.abs(wa).max(axis=1) / 127.0
            ws[ws == 0] = 1.0
            done[w_name] = ws
            shape = [1] * w.ndim
            shape[axis] = -1
            wq = np.clip(np.round(w / ws.reshape(shape)), -127, 127).astype(np.int8)
            new_inits += [numpy_helper.from_array(wq, w_name + "_quantized"),
                          numpy_helper.from_array(ws.astype(np.float32), w_name + "_scale"),
                          numpy_helper.from_array(np.zeros(w.shape[axis], np.int8), w_name + "_zero_point")]
            wdq.append(helper.make_node("DequantizeLinear", [w_name + "_quantized", w_name + "_scale", w_name + "_zero_point"],
                                        [w_name + "_dequantized"], name=w_name + "_DequantizeLinear", axis=axis))
        ws = done[w_name]
        n.input[1] = w_name + "_dequantized"
        if n.op_type == "Conv" and len(n.input) > 2 and n.input[2]:
            b_src = n.input[2]
            b_name = f"{b_src}_{k}" if sum(1 for j in targets if len(nodes[j].input) > 2 and nodes[j].input[2] == b_src) > 1 else b_src
            b = numpy_helper.to_array(inits[b_src]).astype(np.float64)
            bs = (act_scale[n.input[0]] * ws.astype(np.float64)).astype(np.float32)
            bq = np.clip(np.round(b / bs.astype(np.float64)), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            new_inits += [numpy_helper.from_array(bq, b_name + "_quantized"), numpy_helper.from_array(bs, b_name + "_scale"),
                          numpy_helper.from_array(np.zeros(w.shape[0], np.int32), b_name + "_zero_point")]
            wdq.append(helper.make_node("DequantizeLinear", [b_name + "_quantized", b_name + "_scale", b_name + "_zero_point"],
                                        [b_name + "_dequantized"], name=b_name + "_DequantizeLinear", axis=0))
            n.input[2] = b_name + "_dequantized"

    for j, n in enumerate(nodes):
        for k, i in enumerate(n.input):
            if i in qdq and j in readers.get(i, ()):
                n.input[k] = i + "_dequantized"
    return _finish(m, list(wdq), nodes, qdq, new_inits)


def _finish(m, first, nodes, after, new_inits):
    """Orders the graph's nodes (first, then the Q/DQ nodes of the graph input,
    then each node followed by those of its outputs, after[name]), keeps the
    initializers still read, and checks the model."""
    import onnx

    g = m.graph
    ordered = first + after.get(g.input[0].name, [])
    for n in nodes:
        ordered.append(n)
        for o in n.output:
            ordered += after.get(o, [])
    del g.node[:]
    g.node.extend(ordered)
    used = {i for n in g.node for i in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept + [i for i in new_inits if i.name in used])
    onnx.checker.check_model(m)
    return m


def convolutional(model) -> bool:
    """Whether quantize_graph quantises every activation (the ResNet50-UNets)
    rather than only the weighted ops' inputs (quantize_weighted_ops)."""
    return {n.op_type for n in model.graph.node} <= CONV_OPS


def describe(card, conv: bool, calib_what: str) -> str:
    """The int8 card's description."""
    if conv:
        return (f"{card['name']} {card.get('version', '')} quantised to int8 (ONNX QDQ: uint8 activations, "
                f"int8 weights per output channel, int32 biases; removable Relus folded into the "
                f"quantisation), calibrated on {calib_what} by "
                f"lungseg_train.quantize. ConvTranspose weights stay float.")
    return (f"{card['name']} {card.get('version', '')} quantised to int8 (ONNX QDQ around the weighted ops only, as "
            f"onnxruntime.quantization does for transformers: MatMul weights int8 per output column with uint8 "
            f"inputs (ONNX Runtime: MatMulIntegerToFloat), Conv int8 per output channel with uint8 input and "
            f"output and int32 bias (QLinearConv); LayerNorm, Softmax, Gelu, norms, residual Adds, the attention's "
            f"activation x activation MatMuls and ConvTranspose stay float), calibrated on {calib_what} by "
            f"lungseg_train.quantize.")


def parity_tolerance(qm, px: torch.Tensor, py: torch.Tensor, out_scale: float, seeds: int = 8) -> Dict[str, float]:
    """The parity tolerance of a transformer int8 graph. ONNX Runtime's
    kernels differ from the interpreter by float rounding (~1e-6), and a
    difference that small moves an activation across a rounding boundary
    now and then: one quantisation step that the layers after carry (through
    the instance norms of a UNETR's decoder, a Conv output's step is a
    sizeable fraction of a standard deviation). So the tolerance is the
    larger of max(0.5, 8 output steps) and the most the logits move when the
    input moves by Gaussian noise of sigma 1e-6 (the max over `seeds` draws)."""
    worst = 0.0
    with torch.no_grad():
        for k in range(seeds):
            g = torch.Generator().manual_seed(k)
            y = interpret(qm, px + 1e-6 * torch.randn(px.shape, generator=g)).float()
            worst = max(worst, float((y - py).abs().max()))
    return {"tolerance": round(max(0.5, 8 * out_scale, worst), 4), "max_abs_diff_input_noise_1e-6": round(worst, 4)}


def int8_name(name: str) -> str:
    return name[:-len("-crop")] + "-int8-crop" if name.endswith("-crop") else name + "-int8"


def main(argv=None) -> int:
    import onnx

    from . import bare_eval as BE
    from . import composite as C
    from . import data as D
    from . import metrics as MX
    from .onnx_weights import load_model_folder

    ap = argparse.ArgumentParser(prog="python3 -m lungseg_train.quantize", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="../models")
    ap.add_argument("--calib", type=int, default=256, help="training crops used for calibration")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--version", default="1.0.0", help="card version of the int8 model")
    ap.add_argument("--ct-backgrounds", default="../../shared/data/ct_series",
                    help="whole-slice models: folder of the real series calibrated on")
    ap.add_argument("--ct-series", default="popi_00_141")
    ap.add_argument("--ct-step", type=int, default=2)
    ap.add_argument("--json", default="", help="write the float and int8 validation figures here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    with open(os.path.join(a.folder, "card.json")) as f:
        card = json.load(f)
    crop = card.get("task") == "crop"
    size = int(card["input"]["height"])
    fm = onnx.load(os.path.join(a.folder, "model.onnx"))
    parts = D.split_data(D.load(a.data)) if crop else None
    if crop:
        # Training-split bare crops, padded with air as the cascade's windows.
        train = C.bare_eval_set(parts["train"]["crops"], size)
        idx = np.random.default_rng(a.seed).permutation(train.x.shape[0])[:a.calib]
        calib = train.x[torch.from_numpy(idx)]
        calib_what = f"{calib.shape[0]} training-split bare crops"
    else:
        # Whole real chest slices in HU of the series the training already
        # uses as backgrounds (never evaluated on), windowed and resized to
        # the model's side as the Go preprocess stage does.
        from . import ctbg
        bank = ctbg.load_ct_bank(a.ct_backgrounds, [a.ct_series], step=max(1, a.ct_step))
        x = D.window(bank.hu, float(card["normalisation"]["center"]), float(card["normalisation"]["width"]))
        calib = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:a.calib]
        calib_what = f"{calib.shape[0]} real slices of {a.ct_series} (every {a.ct_step}th usable slice)"
    batches = [calib[s:s + 16] for s in range(0, calib.shape[0], 16)]
    ranges = calibrate(fm, batches)
    qm = quantize_graph(fm, ranges)
    print(f"calibrated on {calib_what}, {len(ranges)} tensors, {time.time() - t0:.0f}s", flush=True)

    # The float and the fake-quantised graph on validation bare crops (the
    # threshold: the float card's). Whole-slice models are judged through
    # Go on real slices instead (see train/README.md).
    thr = float(card.get("threshold", 0.5))
    fsum = qsum = None
    if crop:
        val = C.bare_eval_set(parts["val"]["crops"], size)
        model, _, _ = load_model_folder(a.folder)
        sf = BE.bare_scores(model, val, 16)
        sq = BE.bare_scores(model, val, 16, forward=lambda x: interpret(qm, x))
        fsum, qsum = sf.summary(thr), sq.summary(thr)
        print(f"val bare at {thr}: float {MX.fmt(fsum)}\n                 int8  {MX.fmt(qsum)}", flush=True)
        px = val.x[:2].contiguous()
    else:
        px = calib[:2].contiguous()

    name = int8_name(card["name"])
    out = os.path.join(a.out, name)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.onnx")
    onnx.save(qm, path)
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    # Parity: the fake-quantised graph on two inputs; ONNX
    # Runtime's integer kernels round each requantisation on their own, so
    # the tolerance is a few quantisation steps of the logits.
    with torch.no_grad():
        py = interpret(qm, px).float().contiguous()
    px.numpy().astype("<f4").tofile(os.path.join(out, "parity_input.bin"))
    py.numpy().astype("<f4").tofile(os.path.join(out, "parity_output.bin"))
    out_name = fm.graph.output[0].name
    out_scale = (ranges[out_name][1] - ranges[out_name][0]) / 255.0
    with open(os.path.join(a.folder, "parity.json")) as f:
        parity = json.load(f)
    parity.update({"input_shape": list(px.shape), "output_shape": list(py.shape),
                   "reference": "lungseg_train.quantize.interpret (fake-quantised graph in PyTorch)",
                   "tolerance": round(max(0.5, 8 * out_scale), 4)})
    if not convolutional(fm):
        parity.update(parity_tolerance(qm, px, py, out_scale))
    with open(os.path.join(out, "parity.json"), "w") as f:
        json.dump(parity, f, indent=2)
    qcard = dict(card)
    qcard.update({
        "name": name,
        "version": a.version,
        "description": describe(card, convolutional(fm), calib_what),
        "quantization": {"format": "QDQ", "activations": ("uint8 asymmetric, min/max calibration" if convolutional(fm) else
                                                          "uint8 asymmetric, min/max calibration (inputs of MatMul and Conv, "
                                                          "outputs of Conv; the rest float)"),
                         "weights": ("int8 symmetric per output channel (Conv)" if convolutional(fm) else
                                     "int8 symmetric per output column (MatMul) or channel (Conv)"),
                         "bias": "int32" if convolutional(fm) else "int32 (Conv); MatMul's bias Add float",
                         "calibration": {"inputs": calib_what, "seed": a.seed},
                         "from": {"name": card["name"], "version": card.get("version"), "sha256": card.get("sha256")},
                         "val_bare_float": fsum, "val_bare_int8": qsum, "threshold": thr},
        "sha256": sha,
    })
    if "detector" in qcard and isinstance(qcard["detector"], str):
        qcard["detector"] = int8_name(qcard["detector"])
    with open(os.path.join(out, "card.json"), "w") as f:
        json.dump(qcard, f, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": name, "threshold": thr, "val_bare_float": fsum, "val_bare_int8": qsum}, f, indent=2)
    print(f"wrote {out} ({os.path.getsize(path) / 1e6:.1f} MB), {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
