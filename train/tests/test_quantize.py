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
