package seg

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// Report is what ReadSR finds in a measurement report.
type Report struct {
	SOPClassUID, SOPInstanceUID, StudyUID, SeriesUID string
	// Template is the root container's template identifier ("1500").
	Template string
	// Title is the root container's concept name (code meaning).
	Title string
	// Sources are the image library's instance UIDs.
	Sources []string
	Groups  []ReportGroup
}

// ReportGroup is one measurement group of a Report.
type ReportGroup struct {
	TrackingID, TrackingUID string
	// Finding, Site and Laterality are code meanings ("Nodule", "Lung",
	// "Right"; Laterality empty when not stated).
	Finding, Site, Laterality string
	// SEGInstance and Segment are the referenced segment; SourceSeries the
	// series it was made from.
	SEGInstance  string
	Segment      int
	SourceSeries string
	// DiameterMm and VolumeMm3 are the Long Axis and Volume; their units
	// the UCUM codes.
	DiameterMm, VolumeMm3    float64
	DiameterUnit, VolumeUnit string
	// Evaluation is the qualitative evaluation text (the size-based
	// Lung-RADS estimate).
	Evaluation                      string
	AlgorithmName, AlgorithmVersion string
	Comments                        []string
}

// ReadSR reads back the measurement groups of a TID 1500 report written
// by SRDataset (it follows that layout; other reports may read partly).
func ReadSR(b []byte) (*Report, error) {
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil)
	if err != nil {
		return nil, fmt.Errorf("seg: reading SR: %w", err)
	}
	r := &Report{
		SOPClassUID: str(ds.Elements, tag.SOPClassUID), SOPInstanceUID: str(ds.Elements, tag.SOPInstanceUID),
		StudyUID: str(ds.Elements, tag.StudyInstanceUID), SeriesUID: str(ds.Elements, tag.SeriesInstanceUID),
		Title: meaning(ds.Elements, tag.ConceptNameCodeSequence),
	}
	if t := items(ds.Elements, tag.ContentTemplateSequence); len(t) > 0 {
		r.Template = str(t[0], tag.TemplateIdentifier)
	}
	for _, it := range items(ds.Elements, tag.ContentSequence) {
		switch meaning(it, tag.ConceptNameCodeSequence) {
		case imageLibraryCode.meaning:
			for _, g := range items(it, tag.ContentSequence) {
				for _, img := range items(g, tag.ContentSequence) {
					if ref := items(img, tag.ReferencedSOPSequence); len(ref) > 0 {
						r.Sources = append(r.Sources, str(ref[0], tag.ReferencedSOPInstanceUID))
					}
				}
			}
		case measurementsCode.meaning:
			for _, g := range items(it, tag.ContentSequence) {
				r.Groups = append(r.Groups, readGroup(g))
			}
		}
	}
	return r, nil
}

func readGroup(g []*dicom.Element) ReportGroup {
	var out ReportGroup
	for _, it := range items(g, tag.ContentSequence) {
		switch meaning(it, tag.ConceptNameCodeSequence) {
		case trackingIDCode.meaning:
			out.TrackingID = str(it, tag.TextValue)
		case trackingUIDCode.meaning:
			out.TrackingUID = str(it, tag.UID)
		case findingCode.meaning:
			out.Finding = meaning(it, tag.ConceptCodeSequence)
		case refSegmentCode.meaning:
			if ref := items(it, tag.ReferencedSOPSequence); len(ref) > 0 {
				out.SEGInstance = str(ref[0], tag.ReferencedSOPInstanceUID)
				out.Segment = integer(ref[0], tag.ReferencedSegmentNumber)
			}
		case sourceSeriesCode.meaning:
			out.SourceSeries = str(it, tag.UID)
		case findingSiteCode.meaning:
			out.Site = meaning(it, tag.ConceptCodeSequence)
			for _, m := range items(it, tag.ContentSequence) {
				if meaning(m, tag.ConceptNameCodeSequence) == lateralityCode.meaning {
					out.Laterality = meaning(m, tag.ConceptCodeSequence)
				}
			}
		case algorithmNameCode.meaning:
			out.AlgorithmName = str(it, tag.TextValue)
		case algorithmVerCode.meaning:
			out.AlgorithmVersion = str(it, tag.TextValue)
		case longAxisCode.meaning:
			out.DiameterMm, out.DiameterUnit = measured(it)
		case volumeCode.meaning:
			out.VolumeMm3, out.VolumeUnit = measured(it)
		case qualitativeCode.meaning:
			out.Evaluation = str(it, tag.TextValue)
		case commentCode.meaning:
			out.Comments = append(out.Comments, str(it, tag.TextValue))
		}
	}
	return out
}

// measured returns a NUM item's value and unit code (NaN-free: 0 and ""
// when absent).
func measured(it []*dicom.Element) (float64, string) {
	mv := items(it, tag.MeasuredValueSequence)
	if len(mv) == 0 {
		return 0, ""
	}
	v, _ := strconv.ParseFloat(strings.TrimSpace(str(mv[0], tag.NumericValue)), 64)
	unit := ""
	if u := items(mv[0], tag.MeasurementUnitsCodeSequence); len(u) > 0 {
		unit = str(u[0], tag.CodeValue)
	}
	return v, unit
}

func find(es []*dicom.Element, t tag.Tag) *dicom.Element {
	for _, e := range es {
		if e.Tag == t {
			return e
		}
	}
	return nil
}

func str(es []*dicom.Element, t tag.Tag) string {
	e := find(es, t)
	if e == nil || e.Value == nil || e.Value.ValueType() != dicom.Strings {
		return ""
	}
	v := e.Value.GetValue().([]string)
	if len(v) == 0 {
		return ""
	}
	return strings.TrimRight(v[0], " \x00")
}

func integer(es []*dicom.Element, t tag.Tag) int {
	e := find(es, t)
	if e == nil || e.Value == nil || e.Value.ValueType() != dicom.Ints {
		return 0
	}
	v := e.Value.GetValue().([]int)
	if len(v) == 0 {
		return 0
	}
	return v[0]
}

func items(es []*dicom.Element, t tag.Tag) [][]*dicom.Element {
	e := find(es, t)
	if e == nil || e.Value == nil || e.Value.ValueType() != dicom.Sequences {
		return nil
	}
	var out [][]*dicom.Element
	for _, it := range e.Value.GetValue().([]*dicom.SequenceItemValue) {
		out = append(out, it.GetValue().([]*dicom.Element))
	}
	return out
}

// meaning is the code meaning of the first item of a code sequence.
func meaning(es []*dicom.Element, t tag.Tag) string {
	if c := items(es, t); len(c) > 0 {
		return str(c[0], tag.CodeMeaning)
	}
	return ""
}
