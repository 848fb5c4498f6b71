"""Reads a TID 1500 measurement report (DICOM SR) with pydicom and prints,
as JSON, what the Go test checks: the SOP class, the root's title and
template, the image library's instances and, per measurement group, its
tracking identifier and UID, finding, finding site and laterality, the
referenced segment, the algorithm, the long axis and volume with their
units, and the qualitative evaluation. Used by sr_test.go:
python3 read_sr.py FILE."""
import json
import sys

import pydicom


def name(item):
    return item.ConceptNameCodeSequence[0].CodeMeaning


ds = pydicom.dcmread(sys.argv[1])
out = {
    "sop_class": ds.SOPClassUID,
    "title": name(ds),
    "template": ds.ContentTemplateSequence[0].TemplateIdentifier,
    "patient_id": ds.PatientID,
    "sources": [],
    "groups": [],
    "evidence": sorted(
        r.ReferencedSOPInstanceUID
        for s in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    ),
}
for item in ds.ContentSequence:
    if name(item) == "Image Library":
        for group in item.ContentSequence:
            for img in group.ContentSequence:
                out["sources"].append(img.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    if name(item) != "Imaging Measurements":
        continue
    for group in item.ContentSequence:
        g = {"container": name(group), "relationship": group.RelationshipType}
        for c in group.ContentSequence:
            n = name(c)
            if c.ValueType == "TEXT":
                g[n] = c.TextValue
            elif c.ValueType == "UIDREF":
                g[n] = c.UID
            elif c.ValueType == "CODE":
                g[n] = c.ConceptCodeSequence[0].CodeMeaning
                for m in c.get("ContentSequence", []):
                    g[n + "/" + name(m)] = m.ConceptCodeSequence[0].CodeMeaning
            elif c.ValueType == "NUM":
                mv = c.MeasuredValueSequence[0]
                g[n] = {"value": float(mv.NumericValue),
                        "unit": mv.MeasurementUnitsCodeSequence[0].CodeValue,
                        "scheme": mv.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator}
            elif c.ValueType == "IMAGE":
                ref = c.ReferencedSOPSequence[0]
                g[n] = {"class": ref.ReferencedSOPClassUID, "instance": ref.ReferencedSOPInstanceUID,
                        "segment": int(ref.ReferencedSegmentNumber)}
        out["groups"].append(g)
print(json.dumps(out))
