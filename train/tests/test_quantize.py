import json
import os

import numpy as np
import onnx
import pytest
import torch

from lungseg_train import export as E
from lungseg_train import models as M
from lungseg_train import quantize as Q


def _onnx(m, size, tmp_path):
    path = str(tmp_path / "model.onnx")
    E.export_onnx(m, path, size=size)  # as the shipped models are exported
    return onnx.load(path)


def test_interpreter_runs_the_float_graph_as_pytorch(tmp_path):
    torch.manual_seed(0)
    m = M.build("resnet50-unet-small", img_size=64).eval()
    g = _onnx(m, 64, tmp_path)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        want = m(x)
        got = Q.interpret(g, x)
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())


def test_quantized_graph_is_qdq_and_close_to_float(tmp_path):
    torch.manual_seed(0)
    m = M.build("resnet50-unet-small", img_size=64).eval()
    g = _onnx(m, 64, tmp_path)
    calib = [torch.rand(4, 1, 64, 64) for _ in range(2)]
    q = Q.quantize_graph(g, Q.calibrate(g, calib))
    ops = [n.op_type for n in q.graph.node]
    # Every Relu that only followed a Conv or Add is folded into the
    # quantisation; weights are int8 per output channel behind a DQ.
    assert ops.count("Relu") < [n.op_type for n in g.graph.node].count("Relu")
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > ops.count("QuantizeLinear")
    w8 = [i for i in q.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(w8) == ops.count("Conv")
    # On the calibration inputs, the fake-quantised logits follow the float ones.
    x = calib[0]
    with torch.no_grad():
        f = Q.interpret(g, x)
        qq = Q.interpret(q, x)
    corr = np.corrcoef(f.numpy().ravel(), qq.numpy().ravel())[0, 1]
    assert corr > 0.95, corr
    assert Q.int8_name("a-crop") == "a-int8-crop" and Q.int8_name("a") == "a-int8"


MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models")


@pytest.mark.parametrize("name", ["swin-unet-small", "swin-unet-small-crop", "unetr-small", "unetr-small-crop"])
def test_interpreter_reproduces_the_shipped_transformer_parity_outputs(name):
    # The stored parity outputs are PyTorch's (and ONNX Runtime's, within
    # 1e-4) on the stored inputs: the interpreter runs every op of these
    # graphs (MatMul, LayerNormalization, Softmax, Erf, the exporter's shape
    # arithmetic) to the same logits.
    d = os.path.join(MODELS, name)
    if not os.path.isfile(os.path.join(d, "model.onnx")):
        pytest.skip(f"{name} not shipped")
    with open(os.path.join(d, "parity.json")) as f:
        p = json.load(f)
    x = torch.from_numpy(np.fromfile(os.path.join(d, "parity_input.bin"), "<f4").reshape(p["input_shape"]))
    want = np.fromfile(os.path.join(d, "parity_output.bin"), "<f4").reshape(p["output_shape"])
    g = onnx.load(os.path.join(d, "model.onnx"))
    assert {n.op_type for n in g.graph.node} & {"MatMul", "Softmax", "Erf"}
    with torch.no_grad():
        got = Q.interpret(g, x).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4, float(np.abs(got - want).max())


def _parity(d):
    with open(os.path.join(d, "parity.json")) as f:
        p = json.load(f)
    x = torch.from_numpy(np.fromfile(os.path.join(d, "parity_input.bin"), "<f4").reshape(p["input_shape"]))
    y = np.fromfile(os.path.join(d, "parity_output.bin"), "<f4").reshape(p["output_shape"])
    return x, y


@pytest.mark.parametrize("name", ["swin-unet-small-crop", "unetr-small-crop"])
def test_transformer_quantized_only_around_weighted_ops(name):
    d = os.path.join(MODELS, name)
    if not os.path.isfile(os.path.join(d, "model.onnx")):
        pytest.skip(f"{name} not shipped")
    g = onnx.load(os.path.join(d, "model.onnx"))
    x, _ = _parity(d)
    q = Q.quantize_graph(g, Q.calibrate(g, [x]))
    inits = {i.name: i for i in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}

    def dq(t):
        p = producer.get(t)
        return p is not None and p.op_type == "DequantizeLinear"

    mm = [n for n in q.graph.node if n.op_type == "MatMul"]
    weighted = [n for n in mm if dq(n.input[1]) and producer[n.input[1]].input[0] in inits]
    # Every MatMul of a constant weight: int8 weight, one scale per output
    # column (axis 1), uint8 input; the float graph's count of them.
    fw = {i.name for i in g.graph.initializer}
    assert len(weighted) == sum(1 for n in g.graph.node if n.op_type == "MatMul" and n.input[1] in fw) > 0
    for n in weighted:
        wdq = producer[n.input[1]]
        w, s = inits[wdq.input[0]], inits[wdq.input[1]]
        assert w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 2
        assert list(s.dims) == [w.dims[1]] and Q._attrs(wdq)["axis"] == 1
        assert dq(n.input[0]) and inits[producer[n.input[0]].input[2]].data_type == onnx.TensorProto.UINT8
    # Only Conv outputs and the weighted ops' inputs are quantised: the
    # activation x activation MatMuls, LayerNorm, Softmax and Gelu read float
    # tensors (an instance norm after a Conv reads its dequantised output).
    conv_out = {n.output[0] for n in g.graph.node if n.op_type == "Conv"}
    for n in q.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax", "Erf") or (n.op_type == "MatMul" and n not in weighted):
            assert not any(dq(i) for i in n.input), n.name
        for i in n.input:
            if dq(i) and producer[i].input[0] not in inits:
                t = producer[producer[i].input[0]].input[0]  # DQ <- Q <- t
                assert n.op_type in ("MatMul", "Conv") or t in conv_out, (n.name, t)
    with torch.no_grad():
        f = Q.interpret(g, x)
        qq = Q.interpret(q, x)
    corr = np.corrcoef(f.numpy().ravel(), qq.numpy().ravel())[0, 1]
    assert corr > 0.99, corr


@pytest.mark.parametrize("name", sorted(n for n in (os.listdir(MODELS) if os.path.isdir(MODELS) else []) if "-int8" in n))
def test_shipped_int8_parity_outputs_are_the_interpreters(name):
    # The int8 parity outputs (what Go compares ONNX Runtime with) are the
    # fake-quantised graph run by this interpreter on the stored inputs. Not
    # bit for bit: a float sum in another order (another thread count) can
    # move an activation across a rounding boundary, one quantisation step
    # that the next layers carry, so within parity.json's tolerance, and the
    # masks at the card's threshold agree on 99.9% of the pixels.
    d = os.path.join(MODELS, name)
    x, want = _parity(d)
    with open(os.path.join(d, "parity.json")) as f:
        tol = json.load(f)["tolerance"]
    with open(os.path.join(d, "card.json")) as f:
        thr = json.load(f)["threshold"]
    with torch.no_grad():
        got = Q.interpret(onnx.load(os.path.join(d, "model.onnx")), x).numpy()
    assert 0 < tol <= 2 and np.abs(got - want).max() <= tol, float(np.abs(got - want).max())
    logit = np.log(thr / (1 - thr))
    assert np.mean((got >= logit) != (want >= logit)) <= 0.001
