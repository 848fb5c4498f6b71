#!/usr/bin/python3
"""Print, as JSON, the HU values pydicom decodes from DICOM files.

Used by the Go tests of ingest/dicomio to check the reader and the writer
against an independent decoder:
    /usr/bin/python3 pydicom_hu.py FILE... > {"FILE": {"rows", "cols",
    "frames": [[hu...]...], "modality"}}
Rescale slope and intercept come from the top level or, for enhanced
multi-frame files, from the shared functional groups.
"""
import json
import sys

import numpy as np
import pydicom


def rescale(ds):
    src = ds
    if "RescaleSlope" not in ds and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in shared:
            src = shared.PixelValueTransformationSequence[0]
    return float(src.get("RescaleSlope", 1)), float(src.get("RescaleIntercept", 0))


def main():
    out = {}
    for path in sys.argv[1:]:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float64)
        if int(ds.get("NumberOfFrames", 1)) == 1 or arr.ndim == 2:
            arr = arr.reshape((1,) + arr.shape[-2:])
        slope, intercept = rescale(ds)
        hu = np.clip(np.round(arr * slope + intercept), -32768, 32767).astype(int)
        out[path] = dict(rows=int(ds.Rows), cols=int(ds.Columns),
                         frames=[f.ravel().tolist() for f in hu],
                         modality=str(ds.get("Modality", "")))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
