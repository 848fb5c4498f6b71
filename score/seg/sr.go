package seg

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/lungseg/lungseg/pkg/dicomwrite"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// EnhancedSRStorage is the SOP class UID of the measurement reports
// written here (Enhanced SR: no spatial coordinates are needed, the
// regions are the SEG's segment).
const EnhancedSRStorage = "1.2.840.10008.5.1.4.1.1.88.22"

// Laterality of a nodule's finding site, as the centroid gives it.
const (
	LateralityRight = "right"
	LateralityLeft  = "left"
)

// Nodule is one measurement group of the report: one nodule of the series
// as the findings stage groups it (score/findings).
type Nodule struct {
	// TrackingID is the group's Tracking Identifier (112039, DCM): the
	// finding's id, so a reader can match the group to the findings
	// published on lung.findings.>.
	TrackingID string
	// TrackingUID is its Tracking Unique Identifier (112040, DCM);
	// derived from the report and TrackingID when empty.
	TrackingUID string
	// DiameterMm is the longest in-plane diameter (Long Axis), VolumeMm3
	// the volume (areas × slice thickness).
	DiameterMm, VolumeMm3 float64
	// Category is the size-based Lung-RADS estimate; CategoryBasis says
	// how it is made (findings.CategoryBasis).
	Category, CategoryBasis string
	// Laterality is LateralityRight, LateralityLeft or "" (not stated).
	Laterality string
	// Notes are written as comments of the group (e.g. that the pixel
	// spacing or the slice thickness were assumed).
	Notes []string
}

// SEGRef names the SEG whose segment outlines the report's nodules.
type SEGRef struct {
	SeriesUID, InstanceUID string
	// Segment is the segment number (1 when zero).
	Segment int
}

// LateralityOf gives the side of a nodule whose centroid is at column
// centroidCol of an image cols wide, for a standard axial CT slice (rows
// run from anterior to posterior and columns from the patient's right to
// left: the patient's right is on the image's left). A centroid within 5%
// of the image width of the midline states no side.
func LateralityOf(centroidCol float64, cols int) string {
	if cols <= 0 || math.IsNaN(centroidCol) {
		return ""
	}
	mid, margin := float64(cols-1)/2, 0.05*float64(cols)
	switch {
	case centroidCol < mid-margin:
		return LateralityRight
	case centroidCol > mid+margin:
		return LateralityLeft
	}
	return ""
}

// NodulesOf turns the findings of one series into measurement groups;
// cols is the width of the series' images (for the laterality).
func NodulesOf(fs []*lungsegv1.Finding, cols int) []Nodule {
	out := make([]Nodule, 0, len(fs))
	for _, f := range fs {
		n := Nodule{TrackingID: f.Id, DiameterMm: f.DiameterMm, VolumeMm3: f.VolumeMm3, Category: f.Category,
			CategoryBasis: f.CategoryBasis, Laterality: LateralityOf(f.CentroidCol, cols)}
		if f.SpacingAssumed {
			n.Notes = append(n.Notes, "pixel spacing assumed: diameter, area and volume use a configured default")
		}
		if f.ThicknessAssumed {
			n.Notes = append(n.Notes, fmt.Sprintf("slice thickness assumed (%g mm): the volume uses a configured default", f.SliceThicknessMm))
		}
		out = append(out, n)
	}
	return out
}

// Codes of the measurement report (PS3.16 TID 1500, 1411, 1001, 4019).
var (
	reportTitle        = code{"126000", "DCM", "Imaging Measurement Report"}
	languageCode       = code{"121049", "DCM", "Language of Content Item and Descendants"}
	englishUS          = code{"en-US", "RFC5646", "English (United States)"}
	observerTypeCode   = code{"121005", "DCM", "Observer Type"}
	deviceCode         = code{"121007", "DCM", "Device"}
	deviceUIDCode      = code{"121012", "DCM", "Device Observer UID"}
	deviceNameCode     = code{"121013", "DCM", "Device Observer Name"}
	deviceMakerCode    = code{"121014", "DCM", "Device Observer Manufacturer"}
	deviceModelCode    = code{"121015", "DCM", "Device Observer Model Name"}
	procedureCode      = code{"121058", "DCM", "Procedure reported"}
	ctChest            = code{"24627-2", "LN", "CT Chest"}
	imageLibraryCode   = code{"111028", "DCM", "Image Library"}
	libraryGroupCode   = code{"126200", "DCM", "Image Library Group"}
	sourceCode         = code{"260753009", "SCT", "Source"}
	measurementsCode   = code{"126010", "DCM", "Imaging Measurements"}
	groupCode          = code{"125007", "DCM", "Measurement Group"}
	trackingIDCode     = code{"112039", "DCM", "Tracking Identifier"}
	trackingUIDCode    = code{"112040", "DCM", "Tracking Unique Identifier"}
	findingCode        = code{"121071", "DCM", "Finding"}
	refSegmentCode     = code{"121191", "DCM", "Referenced Segment"}
	sourceSeriesCode   = code{"121232", "DCM", "Source series for segmentation"}
	findingSiteCode    = code{"363698007", "SCT", "Finding Site"}
	lateralityCode     = code{"272741003", "SCT", "Laterality"}
	rightCode          = code{"24028007", "SCT", "Right"}
	leftCode           = code{"7771000", "SCT", "Left"}
	algorithmNameCode  = code{"111001", "DCM", "Algorithm Name"}
	algorithmVerCode   = code{"111003", "DCM", "Algorithm Version"}
	longAxisCode       = code{"103339001", "SCT", "Long Axis"}
	volumeCode         = code{"118565006", "SCT", "Volume"}
	qualitativeCode    = code{"C0034375", "UMLS", "Qualitative Evaluations"}
	commentCode        = code{"121106", "DCM", "Comment"}
	millimetre         = code{"mm", "UCUM", "millimeter"}
	cubicMillimetre    = code{"mm3", "UCUM", "cubic millimeter"}
	relContains        = "CONTAINS"
	relConceptMod      = "HAS CONCEPT MOD"
	relObsContext      = "HAS OBS CONTEXT"
	srSeriesNumber     = 9001
	srImplementationID = dicomwrite.NewUID("lungseg", "score/seg", "sr", "implementation")
)

// item is one content item of the report's tree.
type item struct {
	rel, vt  string
	name     code
	text     string // TEXT
	uid      string // UIDREF
	code     code   // CODE
	num      float64
	unit     code   // NUM
	image    *srRef // IMAGE
	children []item // CONTAINER, or the item's modifiers
	template string // CONTAINER: the template it follows
}

type srRef struct {
	class, instance string
	segment         int
}

func (b *builder) item(it item) []*dicom.Element {
	els := []*dicom.Element{
		b.str(tag.RelationshipType, it.rel),
		b.str(tag.ValueType, it.vt),
		b.code(tag.ConceptNameCodeSequence, it.name),
	}
	switch it.vt {
	case "CONTAINER":
		els = append(els, b.str(tag.ContinuityOfContent, "SEPARATE"))
		if it.template != "" {
			els = append(els, b.seq(tag.ContentTemplateSequence, []*dicom.Element{
				b.str(tag.MappingResource, "DCMR"), b.str(tag.TemplateIdentifier, it.template),
			}))
		}
	case "TEXT":
		els = append(els, b.str(tag.TextValue, it.text))
	case "UIDREF":
		els = append(els, b.str(tag.UID, it.uid))
	case "CODE":
		els = append(els, b.code(tag.ConceptCodeSequence, it.code))
	case "NUM":
		els = append(els, b.seq(tag.MeasuredValueSequence, []*dicom.Element{
			b.code(tag.MeasurementUnitsCodeSequence, it.unit),
			b.str(tag.NumericValue, formatDS(it.num)),
		}))
	case "IMAGE":
		ref := []*dicom.Element{
			b.str(tag.ReferencedSOPClassUID, it.image.class),
			b.str(tag.ReferencedSOPInstanceUID, it.image.instance),
		}
		if it.image.segment > 0 {
			ref = append(ref, b.el(tag.ReferencedSegmentNumber, []int{it.image.segment}))
		}
		els = append(els, b.seq(tag.ReferencedSOPSequence, ref))
	}
	if len(it.children) > 0 {
		els = append(els, b.seq(tag.ContentSequence, b.items(it.children)...))
	}
	return els
}

func (b *builder) items(its []item) [][]*dicom.Element {
	out := make([][]*dicom.Element, len(its))
	for i, it := range its {
		out[i] = b.item(it)
	}
	return out
}

// SRDataset builds the TID 1500 measurement report of one series and
// model: one measurement group per nodule, each referring to the segment
// of the SEG seg and to the source series; the image library and the
// evidence list every source instance of frames. Patient and study
// attributes are copied from s as in the SEG.
func SRDataset(s Series, alg Algorithm, frames []Frame, seg SEGRef, nodules []Nodule, o Options) (dicom.Dataset, error) {
	if len(frames) == 0 {
		return dicom.Dataset{}, ErrNoFrames
	}
	if s.StudyUID == "" || s.SeriesUID == "" {
		return dicom.Dataset{}, fmt.Errorf("%w: source study and series UIDs", ErrMissing)
	}
	if alg.Name == "" {
		return dicom.Dataset{}, fmt.Errorf("%w: algorithm name", ErrMissing)
	}
	if seg.SeriesUID == "" || seg.InstanceUID == "" {
		return dicom.Dataset{}, fmt.Errorf("%w: the SEG's series and instance UIDs", ErrMissing)
	}
	if seg.Segment == 0 {
		seg.Segment = 1
	}
	if alg.Version == "" {
		alg.Version = "unknown"
	}
	if o.SeriesUID == "" {
		o.SeriesUID = DefaultSRSeriesUID(s, alg)
	}
	if o.InstanceUID == "" {
		o.InstanceUID = DefaultSRInstanceUID(s, alg)
	}
	if o.SeriesNumber == 0 {
		o.SeriesNumber = srSeriesNumber
	}
	if o.SeriesDescription == "" {
		o.SeriesDescription = alg.Name + " nodule measurements"
	}
	if o.Manufacturer == "" {
		o.Manufacturer = "lungseg"
	}
	if o.Time.IsZero() {
		o.Time = time.Now()
	}
	date, tm := o.Time.Format("20060102"), o.Time.Format("150405")
	b := &builder{}

	// Source instances, in the SEG's frame order, each once.
	type inst struct{ class, uid string }
	var sources []inst
	seen := map[string]bool{}
	for i, f := range Order(frames) {
		if f.SOPInstanceUID == "" || f.SOPClassUID == "" {
			return dicom.Dataset{}, fmt.Errorf("%w: frame %d needs its source's SOP class and instance UIDs", ErrMissing, i+1)
		}
		if !seen[f.SOPInstanceUID] {
			seen[f.SOPInstanceUID] = true
			sources = append(sources, inst{f.SOPClassUID, f.SOPInstanceUID})
		}
	}

	library := make([]item, 0, len(sources))
	for _, src := range sources {
		library = append(library, item{rel: relContains, vt: "IMAGE", name: sourceCode, image: &srRef{class: src.class, instance: src.uid}})
	}
	algorithm := []item{
		{rel: relConceptMod, vt: "TEXT", name: algorithmNameCode, text: alg.Name},
		{rel: relConceptMod, vt: "TEXT", name: algorithmVerCode, text: alg.Version},
	}
	groups := make([]item, 0, len(nodules))
	for i, n := range nodules {
		if n.TrackingID == "" {
			return dicom.Dataset{}, fmt.Errorf("%w: nodule %d has no tracking identifier", ErrMissing, i+1)
		}
		if math.IsNaN(n.DiameterMm) || math.IsInf(n.DiameterMm, 0) || math.IsNaN(n.VolumeMm3) || math.IsInf(n.VolumeMm3, 0) {
			return dicom.Dataset{}, fmt.Errorf("seg: nodule %s: diameter %g mm, volume %g mm³", n.TrackingID, n.DiameterMm, n.VolumeMm3)
		}
		trackUID := n.TrackingUID
		if trackUID == "" {
			trackUID = dicomwrite.NewUID(o.InstanceUID, "tracking", n.TrackingID)
		}
		site := item{rel: relConceptMod, vt: "CODE", name: findingSiteCode, code: anatomyCode}
		switch n.Laterality {
		case LateralityRight:
			site.children = []item{{rel: relConceptMod, vt: "CODE", name: lateralityCode, code: rightCode}}
		case LateralityLeft:
			site.children = []item{{rel: relConceptMod, vt: "CODE", name: lateralityCode, code: leftCode}}
		case "":
		default:
			return dicom.Dataset{}, fmt.Errorf("seg: nodule %s: laterality %q", n.TrackingID, n.Laterality)
		}
		g := []item{
			{rel: relContains, vt: "TEXT", name: trackingIDCode, text: n.TrackingID},
			{rel: relContains, vt: "UIDREF", name: trackingUIDCode, uid: trackUID},
			{rel: relContains, vt: "CODE", name: findingCode, code: typeCode},
			{rel: relContains, vt: "IMAGE", name: refSegmentCode, image: &srRef{class: SegmentationStorage, instance: seg.InstanceUID, segment: seg.Segment}},
			{rel: relContains, vt: "UIDREF", name: sourceSeriesCode, uid: s.SeriesUID},
			site,
		}
		g = append(g, algorithm...)
		g = append(g,
			item{rel: relContains, vt: "NUM", name: longAxisCode, num: n.DiameterMm, unit: millimetre},
			item{rel: relContains, vt: "NUM", name: volumeCode, num: n.VolumeMm3, unit: cubicMillimetre},
		)
		if n.Category != "" {
			g = append(g, item{rel: relContains, vt: "TEXT", name: qualitativeCode,
				text: "Lung-RADS size-based estimate " + n.Category + ", not a Lung-RADS assessment (" + n.CategoryBasis + ")"})
		}
		for _, note := range n.Notes {
			g = append(g, item{rel: relContains, vt: "TEXT", name: commentCode, text: note})
		}
		groups = append(groups, item{rel: relContains, vt: "CONTAINER", name: groupCode, template: "1411", children: g})
	}
	content := []item{
		{rel: relConceptMod, vt: "CODE", name: languageCode, code: englishUS},
		{rel: relObsContext, vt: "CODE", name: observerTypeCode, code: deviceCode},
		{rel: relObsContext, vt: "UIDREF", name: deviceUIDCode, uid: dicomwrite.NewUID("lungseg-device", alg.Name, alg.Version)},
		{rel: relObsContext, vt: "TEXT", name: deviceNameCode, text: alg.Name},
		{rel: relObsContext, vt: "TEXT", name: deviceMakerCode, text: o.Manufacturer},
		{rel: relObsContext, vt: "TEXT", name: deviceModelCode, text: alg.Name + " " + alg.Version},
		{rel: relConceptMod, vt: "CODE", name: procedureCode, code: ctChest},
		{rel: relContains, vt: "CONTAINER", name: imageLibraryCode, children: []item{
			{rel: relContains, vt: "CONTAINER", name: libraryGroupCode, children: library},
		}},
		{rel: relContains, vt: "CONTAINER", name: measurementsCode, children: groups},
	}

	var srcRefs [][]*dicom.Element
	for _, src := range sources {
		srcRefs = append(srcRefs, []*dicom.Element{
			b.str(tag.ReferencedSOPClassUID, src.class), b.str(tag.ReferencedSOPInstanceUID, src.uid),
		})
	}
	evidence := b.seq(tag.CurrentRequestedProcedureEvidenceSequence, []*dicom.Element{
		b.str(tag.StudyInstanceUID, s.StudyUID),
		b.seq(tag.ReferencedSeriesSequence,
			[]*dicom.Element{
				b.str(tag.SeriesInstanceUID, s.SeriesUID),
				b.seq(tag.ReferencedSOPSequence, srcRefs...),
			},
			[]*dicom.Element{
				b.str(tag.SeriesInstanceUID, seg.SeriesUID),
				b.seq(tag.ReferencedSOPSequence, []*dicom.Element{
					b.str(tag.ReferencedSOPClassUID, SegmentationStorage), b.str(tag.ReferencedSOPInstanceUID, seg.InstanceUID),
				}),
			}),
	})

	els := append(b.header(EnhancedSRStorage, o.InstanceUID, srImplementationID, "LUNGSEG_SR_1", date, tm, s),
		// SR Document Series.
		b.str(tag.Modality, "SR"),
		b.str(tag.SeriesInstanceUID, o.SeriesUID),
		b.str(tag.SeriesNumber, strconv.Itoa(o.SeriesNumber)),
		b.str(tag.SeriesDescription, clip(o.SeriesDescription, 64)),
		b.str(tag.SeriesDate, date),
		b.str(tag.SeriesTime, tm),
		b.seq(tag.ReferencedPerformedProcedureStepSequence),
		// General Equipment.
		b.str(tag.Manufacturer, o.Manufacturer),
		b.str(tag.ManufacturerModelName, clip(alg.Name, 64)),
		b.str(tag.SoftwareVersions, clip(alg.Version, 64)),
		// SR Document General.
		b.str(tag.InstanceNumber, "1"),
		b.str(tag.CompletionFlag, "COMPLETE"),
		b.str(tag.VerificationFlag, "UNVERIFIED"),
		b.str(tag.ContentDate, date),
		b.str(tag.ContentTime, tm),
		b.seq(tag.PerformedProcedureCodeSequence),
		evidence,
		// SR Document Content: the root container.
		b.str(tag.ValueType, "CONTAINER"),
		b.code(tag.ConceptNameCodeSequence, reportTitle),
		b.str(tag.ContinuityOfContent, "SEPARATE"),
		b.seq(tag.ContentTemplateSequence, []*dicom.Element{
			b.str(tag.MappingResource, "DCMR"), b.str(tag.TemplateIdentifier, "1500"),
		}),
		b.seq(tag.ContentSequence, b.items(content)...),
	)
	if b.err != nil {
		return dicom.Dataset{}, b.err
	}
	sortElements(els)
	return dicom.Dataset{Elements: els}, nil
}

// DefaultSRSeriesUID and DefaultSRInstanceUID are the report's UIDs when
// Options leave them empty: derived from the source series and the
// algorithm, so rewriting the same report gives the same UIDs.
func DefaultSRSeriesUID(s Series, alg Algorithm) string {
	return derivedUID("lungseg-sr", s, alg, "series")
}

// DefaultSRInstanceUID: see DefaultSRSeriesUID.
func DefaultSRInstanceUID(s Series, alg Algorithm) string {
	return derivedUID("lungseg-sr", s, alg, "instance")
}

// WriteSR writes the report as a Part 10 file.
func WriteSR(w io.Writer, s Series, alg Algorithm, frames []Frame, seg SEGRef, nodules []Nodule, o Options) error {
	ds, err := SRDataset(s, alg, frames, seg, nodules, o)
	if err != nil {
		return err
	}
	if err := dicom.Write(w, ds); err != nil {
		return fmt.Errorf("seg: writing the SR: %w", err)
	}
	return nil
}

// SRBytes returns the report as a Part 10 file.
func SRBytes(s Series, alg Algorithm, frames []Frame, seg SEGRef, nodules []Nodule, o Options) ([]byte, error) {
	var buf bytes.Buffer
	if err := WriteSR(&buf, s, alg, frames, seg, nodules, o); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
