#!/usr/bin/python3
"""Writes the tiny cascade test models used by the +crop tests.

Run from anywhere with Debian's Python (torch 1.13, onnx):

    /usr/bin/python3 segment/testdata/make_tiny_cascade.py

Both models are one 1x1 convolution, so their logits are a*x + b of each
input pixel x and a test can compute their output independently:

  tiny-det/   whole-slice "detector", input "input" [N,1,256,256], output
              "logits" [N,1,256,256]; a = 20, b = -20 * 850/1500, so the
              logit is 0 at -500 HU under the window (centre -600, width
              1500): soft tissue and nodules are found, lung is not.
  tiny-crop/  crop model paired with tiny-det (task "crop"), input
              [N,1,128,128]; a = 30, b = -30 * 1049.5/1500, so the logit is
              0 at -300.5 HU: halfway between integers, so every integer HU
              is at least 0.01 logit away from the 0.5 threshold and float
              rounding cannot flip a pixel.

Both have a dynamic batch axis, opset 17. Each folder gets model.onnx and
card.json (pkg/model.Card, sha256 included).
"""
import hashlib
import json
import os

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
CENTER, WIDTH = -600.0, 1500.0


def write(name, size, a, b, card):
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    m = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        m.weight.fill_(a)
        m.bias.fill_(b)
    m.eval()
    path = os.path.join(out, "model.onnx")
    torch.onnx.export(
        m, torch.zeros(1, 1, size, size), path, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )
    with open(path, "rb") as f:
        card["sha256"] = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(out, "card.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")


def card(name, size, a, b, **extra):
    c = {
        "name": name,
        "architecture": "conv1x1",
        "version": "0.0.1",
        "description": "Test model: one 1x1 convolution, logits = %g*x %+g of the windowed input "
        "(segment/testdata/make_tiny_cascade.py)." % (a, b),
        "input": {"channels": 1, "height": size, "width": size},
        "normalisation": {"kind": "window", "center": CENTER, "width": WIDTH},
        "threshold": 0.5,
        "output": "logits",
        "input_name": "input",
        "output_name": "logits",
        "parameters": 2,
    }
    c.update(extra)
    return c


def main():
    a, b = 20.0, -20.0 * 850.0 / 1500.0
    write("tiny-det", 256, a, b, card("tiny-det", 256, a, b))
    a, b = 30.0, -30.0 * 1049.5 / 1500.0
    write("tiny-crop", 128, a, b, card("tiny-crop", 128, a, b, task="crop", detector="tiny-det",
                                       cascade={"window": 128, "detect_threshold": 0.25, "max_candidates": 8}))


if __name__ == "__main__":
    main()
