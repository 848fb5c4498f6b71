#!/usr/bin/python3
"""Reference outputs for parity_test.go, computed with scipy.ndimage.

Usage: scipy_parity.py DIR ROWS COLS ANGLE...

Reads DIR/image.f32 and DIR/noise.f32 (little-endian float32, ROWS×COLS)
and writes, as little-endian float64:
  DIR/rot_<i>.f64   scipy.ndimage.rotate(image, ANGLE_i, reshape=False,
                    order=1, mode="grid-constant", cval=-1024)
  DIR/blur_<s>.f64  scipy.ndimage.gaussian_filter(noise, s, mode="reflect",
                    truncate=4.0) for s in 1.5, 4 and 10
"""
import os
import sys

import numpy as np
import scipy.ndimage as nd

d, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
angles = [float(a) for a in sys.argv[4:]]
img = np.fromfile(os.path.join(d, "image.f32"), dtype="<f4").astype(np.float64).reshape(rows, cols)
noise = np.fromfile(os.path.join(d, "noise.f32"), dtype="<f4").astype(np.float64).reshape(rows, cols)
for i, a in enumerate(angles):
    out = nd.rotate(img, a, reshape=False, order=1, mode="grid-constant", cval=-1024.0, prefilter=False)
    out.astype("<f8").tofile(os.path.join(d, "rot_%d.f64" % i))
for s in (1.5, 4.0, 10.0):
    out = nd.gaussian_filter(noise, s, mode="reflect", truncate=4.0)
    out.astype("<f8").tofile(os.path.join(d, "blur_%g.f64" % s))
