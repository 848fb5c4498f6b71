"""Reads a DICOM SEG with pydicom and prints, as JSON, what the Go test
checks: the frames' set pixels (flat indices), each frame's source
instance and frame number, the segment's algorithm identification and the
referenced instances. Used by seg_test.go: python3 read_seg.py FILE."""
import json
import sys

import pydicom

ds = pydicom.dcmread(sys.argv[1])
pix = ds.pixel_array
if pix.ndim == 2:
    pix = pix[None]
frames = []
for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence):
    src = f.DerivationImageSequence[0].SourceImageSequence[0]
    frames.append({
        "instance": src.ReferencedSOPInstanceUID,
        "class": src.ReferencedSOPClassUID,
        "frame": int(src.get("ReferencedFrameNumber", 0) or 0),
        "segment": int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
        "index": [int(v) for v in f.FrameContentSequence[0].DimensionIndexValues],
        "set": [int(v) for v in pix[i].reshape(-1).nonzero()[0]],
    })
seg = ds.SegmentSequence[0]
alg = seg.SegmentationAlgorithmIdentificationSequence[0]
print(json.dumps({
    "sop_class": ds.SOPClassUID,
    "rows": int(ds.Rows), "cols": int(ds.Columns), "frames": int(ds.NumberOfFrames),
    "type": ds.SegmentationType,
    "algorithm": [seg.SegmentAlgorithmName, alg.AlgorithmName, alg.AlgorithmVersion],
    "label": seg.SegmentLabel,
    "property": seg.SegmentedPropertyTypeCodeSequence[0].CodeMeaning,
    "study": ds.StudyInstanceUID, "patient_id": ds.PatientID,
    "referenced": [r.ReferencedSOPInstanceUID for r in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence],
    "per_frame": frames,
}))
