#!/usr/bin/python3
"""Writes the tiny untrained test model used by segment/infer's tests.

Run from anywhere with Debian's Python (torch 1.13, onnx):

    /usr/bin/python3 segment/testdata/make_tiny_unet.py

It writes, next to this script:

  tiny/model.onnx  a randomly initialised (seed 20240601) two-level U-Net
                   with about 5.8k parameters, opset 17, input "input"
                   [N,1,256,256] float32 with a dynamic batch axis, output
                   "logits" [N,1,256,256];
  tiny/card.json   its model card (pkg/model.Card), sha256 included;
  tiny/parity.bin  a seeded CT-like input and PyTorch's logits for it, so
                   Go can check ONNX Runtime against PyTorch (one image
                   keeps the file at 320 KiB; the Go tests check batches
                   against single-image runs).

parity.bin layout (all little-endian):
  8 bytes   magic "LSPARITY"
  uint32    length L of the JSON header
  L bytes   JSON header: {"inputs": {"dtype": "uint8", "shape": [N,1,H,W],
            "scale": 255}, "outputs": {"dtype": "float32", "shape":
            [N,1,H,W], "kind": "logits"}, ...}
  N*H*W     uint8 inputs q; the model input is float32(q) / 255 (float32
            division), so Go rebuilds the exact tensor PyTorch saw
  N*H*W*4   float32 logits from PyTorch (eval mode, 1 thread)
Inputs are stored as uint8 to keep the file small.
"""
import hashlib
import json
import os
import struct

import numpy as np
import onnx
import torch
from torch import nn

SEED = 20240601
H = W = 256
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tiny")


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """Two-level U-Net: 8 channels at full size, 16 at half size."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(block(1, 8), block(8, 8))
        self.pool = nn.MaxPool2d(2)
        self.enc2 = nn.Sequential(block(8, 16), block(16, 16))
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = block(16, 8)
        self.head = nn.Conv2d(8, 1, 1)

        # Kaiming init keeps activations from fading through the ReLUs and
        # a scaled-up head spreads the logits over a few units either side
        # of 0, so the 0.5 threshold cuts the output into a non-trivial mask
        # and the parity check compares values of a realistic size.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.uniform_(m.bias, -0.1, 0.1)
        with torch.no_grad():
            self.head.weight.mul_(5)

    def forward(self, x):
        s1 = self.enc1(x)
        b = self.enc2(self.pool(s1))
        d = self.dec1(torch.cat([self.up(b), s1], dim=1))
        return self.head(d)


def ct_like(rng):
    """A crude windowed CT slice: body, two lungs, a few nodules, noise."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    body = ((yy - 128) / 110) ** 2 + ((xx - 128) / 120) ** 2 < 1
    img[body] = 0.42
    for cx in (80, 176):
        lung = ((yy - 120) / 80) ** 2 + ((xx - cx) / 38) ** 2 < 1
        img[lung] = 0.06
    for _ in range(3):
        cy, cx, r = rng.uniform(70, 170), rng.choice([80, 176]) + rng.uniform(-15, 15), rng.uniform(3, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.45
    img += rng.normal(0, 0.03, size=img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def main():
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    net = TinyUNet().eval()
    params = sum(p.numel() for p in net.parameters())

    os.makedirs(OUT, exist_ok=True)
    model_path = os.path.join(OUT, "model.onnx")
    torch.onnx.export(
        net,
        torch.zeros(1, 1, H, W),
        model_path,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    onnx.checker.check_model(onnx.load(model_path))
    with open(model_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    card = {
        "name": "tiny",
        "architecture": "unet",
        "variant": "tiny-2level",
        "version": "0.0.1",
        "description": "Untrained test model: a two-level U-Net with random weights "
        "(seed %d), made by segment/testdata/make_tiny_unet.py. Its masks are "
        "meaningless; it exists so tests run real ONNX Runtime inference." % SEED,
        "input": {"channels": 1, "height": H, "width": W},
        "normalisation": {"kind": "window", "center": -600, "width": 1500},
        "threshold": 0.5,
        "output": "logits",
        "input_name": "input",
        "output_name": "logits",
        "sha256": sha,
        "parameters": params,
        "training": {"trained": False, "seed": SEED},
    }
    with open(os.path.join(OUT, "card.json"), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")

    rng = np.random.default_rng(SEED)
    q = ct_like(rng)[None, None]
    x = torch.from_numpy(q).float() / 255.0
    with torch.no_grad():
        y = net(x).numpy().astype("<f4")
    header = {
        "inputs": {"dtype": "uint8", "shape": list(q.shape), "scale": 255},
        "outputs": {"dtype": "float32", "shape": list(y.shape), "kind": "logits"},
        "seed": SEED,
        "torch": torch.__version__,
    }
    hb = json.dumps(header).encode()
    with open(os.path.join(OUT, "parity.bin"), "wb") as f:
        f.write(b"LSPARITY")
        f.write(struct.pack("<I", len(hb)))
        f.write(hb)
        f.write(q.tobytes())
        f.write(y.tobytes())
    print("wrote %s: %d parameters, sha256 %s; logits range [%.3f, %.3f]"
          % (OUT, params, sha, float(y.min()), float(y.max())))


if __name__ == "__main__":
    main()
