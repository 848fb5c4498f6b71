// Package seg writes the predicted nodule masks of one CT series and one
// model as a DICOM Segmentation (SEG) object, with
// github.com/suyashkumar/dicom.
//
// The object is a binary segmentation with one segment ("Nodule") whose
// algorithm identification names the model and its version. It has one
// frame per source frame, in slice position order, each at the source's
// resolution; every frame refers to its source instance (and frame) in the
// Derivation Image functional group, and the Common Instance Reference
// module lists every source instance. Frames are indexed by segment
// number and in-stack position (the Multi-frame Dimension module). Since
// the pipeline's slice metadata has no Frame of Reference or patient
// orientation, the SEG does not carry plane positions: viewers map its
// frames to the source images through the Source Image Sequence.
//
// Beside each SEG it writes a TID 1500 measurement report (Enhanced SR,
// sr.go): one measurement group per nodule that score/findings groups
// from the same masks (tracking identifier = the finding's id, long axis
// and volume in UCUM units, finding site with laterality, the size-based
// Lung-RADS estimate labelled as such, the algorithm, and references to
// the SEG's segment and the source images). ReadSR reads one back. The
// Collector writes both for each quiet series.
package seg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
	"github.com/suyashkumar/dicom/pkg/uid"

	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// SegmentationStorage is the SOP class UID of the objects written here.
const SegmentationStorage = "1.2.840.10008.5.1.4.1.1.66.4"

// MaxFrames bounds the frames of one SEG.
const MaxFrames = dicomwrite.MaxFrames

// Errors.
var (
	// ErrNoFrames reports a SEG with no source frame.
	ErrNoFrames = errors.New("seg: no source frames")
	// ErrShape reports frames of different sizes, or a mask whose size is
	// not the series'.
	ErrShape = errors.New("seg: frames differ in size")
	// ErrMissing reports a required UID or name left empty.
	ErrMissing = errors.New("seg: required attribute missing")
)

// Algorithm identifies the model that made the masks.
type Algorithm struct {
	Name, Version string
	// Parameters, if set, is written as AlgorithmParameters (e.g.
	// "threshold=0.5").
	Parameters string
}

// Frame is one source frame and the mask predicted on it.
type Frame struct {
	SOPClassUID, SOPInstanceUID string
	// FrameNumber is the 1-based frame of a multi-frame source; 0 for a
	// single-frame instance.
	FrameNumber int
	// PositionMm orders the frames (slice position along z).
	PositionMm float64
	// Mask is the prediction at the source's resolution.
	Mask *imgx.Mask
}

// Series identifies the source series and what the SEG copies from it.
type Series struct {
	StudyUID, SeriesUID string
	// Patient and study attributes copied into the SEG (type 2: empty is
	// allowed, but a PACS files the SEG under the source's patient only
	// when they match).
	PatientName, PatientID, PatientBirthDate, PatientSex string
	StudyDate, StudyTime, StudyID, AccessionNumber       string
	ReferringPhysicianName                               string
	// SpacingRowMm and SpacingColMm are the source pixel spacing (0 when
	// unknown: the Pixel Measures group is then left out).
	SpacingRowMm, SpacingColMm float64
}

// Options are the SEG's own identity; zero values take defaults.
type Options struct {
	// SeriesUID and InstanceUID of the SEG; by default derived from the
	// source series and the algorithm, so rewriting the same SEG gives the
	// same UIDs.
	SeriesUID, InstanceUID string
	SeriesNumber           int    // default 9000
	SeriesDescription      string // default "<model> nodule segmentation"
	Manufacturer           string // default "lungseg"
	// Time is the content date and time (default now).
	Time time.Time
}

// Segment codes (SNOMED CT, as DICOM CID 7150/7151 use them).
var (
	categoryCode = code{"49755003", "SCT", "Morphologically Altered Structure"}
	typeCode     = code{"27925004", "SCT", "Nodule"}
	anatomyCode  = code{"39607008", "SCT", "Lung"}
	// familyCode is CID 7162 "Artificial Intelligence".
	familyCode = code{"123110", "DCM", "Artificial Intelligence"}
	// sourcePurpose is CID 7202 "Source image for image processing
	// operation".
	sourcePurpose = code{"121322", "DCM", "Source image for image processing operation"}
	// derivationCode is CID 7203 "Segmentation".
	derivationCode = code{"113076", "DCM", "Segmentation"}
)

type code struct{ value, scheme, meaning string }

// builder collects elements and the first error.
type builder struct{ err error }

func (b *builder) el(t tag.Tag, v any) *dicom.Element {
	e, err := dicom.NewElement(t, v)
	if err != nil && b.err == nil {
		b.err = fmt.Errorf("seg: making %s: %w", tag.DebugString(t), err)
	}
	return e
}

func (b *builder) str(t tag.Tag, v ...string) *dicom.Element { return b.el(t, v) }

// header is what the SEG and the SR begin with: file meta, SOP Common and
// the patient and study copied from the source series.
func (b *builder) header(class, instance, implUID, implVersion, date, tm string, s Series) []*dicom.Element {
	return []*dicom.Element{
		// File meta.
		b.el(tag.FileMetaInformationVersion, []byte{0, 1}),
		b.str(tag.MediaStorageSOPClassUID, class),
		b.str(tag.MediaStorageSOPInstanceUID, instance),
		b.str(tag.TransferSyntaxUID, uid.ExplicitVRLittleEndian),
		b.str(tag.ImplementationClassUID, implUID),
		b.str(tag.ImplementationVersionName, implVersion),
		// SOP Common.
		b.str(tag.SpecificCharacterSet, "ISO_IR 192"),
		b.str(tag.SOPClassUID, class),
		b.str(tag.SOPInstanceUID, instance),
		b.str(tag.InstanceCreationDate, date),
		b.str(tag.InstanceCreationTime, tm),
		// Patient and General Study (copied from the source).
		b.str(tag.PatientName, s.PatientName),
		b.str(tag.PatientID, s.PatientID),
		b.str(tag.PatientBirthDate, s.PatientBirthDate),
		b.str(tag.PatientSex, s.PatientSex),
		b.str(tag.StudyInstanceUID, s.StudyUID),
		b.str(tag.StudyDate, s.StudyDate),
		b.str(tag.StudyTime, s.StudyTime),
		b.str(tag.StudyID, s.StudyID),
		b.str(tag.AccessionNumber, s.AccessionNumber),
		b.str(tag.ReferringPhysicianName, s.ReferringPhysicianName),
	}
}

// seq makes a sequence; each item's elements are sorted by tag.
func (b *builder) seq(t tag.Tag, items ...[]*dicom.Element) *dicom.Element {
	for _, it := range items {
		sortElements(it)
	}
	return b.el(t, items)
}

func (b *builder) code(t tag.Tag, c code) *dicom.Element {
	return b.seq(t, []*dicom.Element{
		b.str(tag.CodeValue, c.value), b.str(tag.CodingSchemeDesignator, c.scheme), b.str(tag.CodeMeaning, c.meaning),
	})
}

func sortElements(es []*dicom.Element) {
	slices.SortStableFunc(es, func(a, b *dicom.Element) int { return a.Tag.Compare(b.Tag) })
}

func formatDS(v float64) string {
	for prec := 12; prec > 0; prec-- {
		s := strconv.FormatFloat(v, 'g', prec, 64)
		if len(s) <= 16 {
			return s
		}
	}
	return strconv.FormatFloat(v, 'e', 6, 64)
}

// clip truncates s to n bytes (the VR's maximum length).
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Order returns the frames sorted as the SEG stores them: by position,
// then instance UID and frame number (a copy; frames is not changed).
func Order(frames []Frame) []Frame {
	out := slices.Clone(frames)
	slices.SortStableFunc(out, func(a, b Frame) int {
		switch {
		case a.PositionMm < b.PositionMm:
			return -1
		case a.PositionMm > b.PositionMm:
			return 1
		}
		if c := strings.Compare(a.SOPInstanceUID, b.SOPInstanceUID); c != 0 {
			return c
		}
		return a.FrameNumber - b.FrameNumber
	})
	return out
}

// Dataset builds the SEG of one series and model. Frames are stored in
// Order; every mask must have the same size.
func Dataset(s Series, alg Algorithm, frames []Frame, o Options) (dicom.Dataset, error) {
	if len(frames) == 0 {
		return dicom.Dataset{}, ErrNoFrames
	}
	if len(frames) > MaxFrames {
		return dicom.Dataset{}, fmt.Errorf("seg: %d frames, over the %d limit", len(frames), MaxFrames)
	}
	if s.StudyUID == "" || s.SeriesUID == "" {
		return dicom.Dataset{}, fmt.Errorf("%w: source study and series UIDs", ErrMissing)
	}
	if alg.Name == "" {
		return dicom.Dataset{}, fmt.Errorf("%w: algorithm name", ErrMissing)
	}
	if alg.Version == "" {
		alg.Version = "unknown"
	}
	frames = Order(frames)
	rows, cols := 0, 0
	for i, f := range frames {
		if f.Mask == nil || f.SOPInstanceUID == "" || f.SOPClassUID == "" {
			return dicom.Dataset{}, fmt.Errorf("%w: frame %d needs a mask and its source's SOP class and instance UIDs", ErrMissing, i+1)
		}
		if err := imgx.CheckSize(f.Mask.Rows, f.Mask.Cols); err != nil {
			return dicom.Dataset{}, fmt.Errorf("seg: frame %d: %w", i+1, err)
		}
		if i == 0 {
			rows, cols = f.Mask.Rows, f.Mask.Cols
		} else if f.Mask.Rows != rows || f.Mask.Cols != cols {
			return dicom.Dataset{}, fmt.Errorf("%w: frame %d is %d×%d, frame 1 is %d×%d", ErrShape, i+1, f.Mask.Rows, f.Mask.Cols, rows, cols)
		}
	}
	if o.SeriesUID == "" {
		o.SeriesUID = DefaultSeriesUID(s, alg)
	}
	if o.InstanceUID == "" {
		o.InstanceUID = DefaultInstanceUID(s, alg)
	}
	if o.SeriesNumber == 0 {
		o.SeriesNumber = 9000
	}
	if o.SeriesDescription == "" {
		o.SeriesDescription = alg.Name + " nodule segmentation"
	}
	if o.Manufacturer == "" {
		o.Manufacturer = "lungseg"
	}
	if o.Time.IsZero() {
		o.Time = time.Now()
	}
	date, tm := o.Time.Format("20060102"), o.Time.Format("150405")
	dimOrg := dicomwrite.NewUID(o.InstanceUID, "dimension-organization")
	b := &builder{}

	segment := []*dicom.Element{
		b.el(tag.SegmentNumber, []int{1}),
		b.str(tag.SegmentLabel, "Nodule"),
		b.str(tag.SegmentAlgorithmType, "AUTOMATIC"),
		b.str(tag.SegmentAlgorithmName, clip(alg.Name, 64)),
		b.code(tag.SegmentedPropertyCategoryCodeSequence, categoryCode),
		b.code(tag.SegmentedPropertyTypeCodeSequence, typeCode),
		b.code(tag.AnatomicRegionSequence, anatomyCode),
		b.el(tag.RecommendedDisplayCIELabValue, []int{55142, 50712, 51895}), // yellow-orange
	}
	algID := []*dicom.Element{
		b.code(tag.AlgorithmFamilyCodeSequence, familyCode),
		b.str(tag.AlgorithmName, clip(alg.Name, 64)),
		b.str(tag.AlgorithmVersion, clip(alg.Version, 64)),
	}
	if alg.Parameters != "" {
		algID = append(algID, b.str(tag.AlgorithmParameters, alg.Parameters))
	}
	segment = append(segment, b.seq(tag.SegmentationAlgorithmIdentificationSequence, algID))

	var shared []*dicom.Element
	if s.SpacingRowMm > 0 && s.SpacingColMm > 0 && !math.IsInf(s.SpacingRowMm+s.SpacingColMm, 0) {
		shared = append(shared, b.seq(tag.PixelMeasuresSequence, []*dicom.Element{
			b.str(tag.PixelSpacing, formatDS(s.SpacingRowMm), formatDS(s.SpacingColMm)),
		}))
	}

	perFrame := make([][]*dicom.Element, len(frames))
	refs := map[string]string{} // instance → class, for Common Instance Reference
	var refOrder []string
	packed := make([]byte, 0, (len(frames)*rows*cols+7)/8+1)
	bit := 0
	for i, f := range frames {
		src := []*dicom.Element{
			b.str(tag.ReferencedSOPClassUID, f.SOPClassUID),
			b.str(tag.ReferencedSOPInstanceUID, f.SOPInstanceUID),
			b.code(tag.PurposeOfReferenceCodeSequence, sourcePurpose),
		}
		if f.FrameNumber > 0 {
			src = append(src, b.str(tag.ReferencedFrameNumber, strconv.Itoa(f.FrameNumber)))
		}
		perFrame[i] = []*dicom.Element{
			b.seq(tag.DerivationImageSequence, []*dicom.Element{
				b.code(tag.DerivationCodeSequence, derivationCode),
				b.seq(tag.SourceImageSequence, src),
			}),
			b.seq(tag.FrameContentSequence, []*dicom.Element{
				b.el(tag.DimensionIndexValues, []int{1, i + 1}),
				b.str(tag.StackID, "1"),
				b.el(tag.InStackPositionNumber, []int{i + 1}),
			}),
			b.seq(tag.SegmentIdentificationSequence, []*dicom.Element{
				b.el(tag.ReferencedSegmentNumber, []int{1}),
			}),
		}
		if _, ok := refs[f.SOPInstanceUID]; !ok {
			refs[f.SOPInstanceUID] = f.SOPClassUID
			refOrder = append(refOrder, f.SOPInstanceUID)
		}
		// Frames are packed back to back, least significant bit first
		// (PS3.5 §8.1.1 for BitsAllocated 1): frame i+1 starts at the bit
		// after frame i ends.
		for _, v := range f.Mask.Pix {
			if bit == 0 {
				packed = append(packed, 0)
			}
			if v != 0 {
				packed[len(packed)-1] |= 1 << bit
			}
			bit = (bit + 1) % 8
		}
	}
	if len(packed)%2 == 1 {
		packed = append(packed, 0)
	}
	var refInstances [][]*dicom.Element
	for _, inst := range refOrder {
		refInstances = append(refInstances, []*dicom.Element{
			b.str(tag.ReferencedSOPClassUID, refs[inst]),
			b.str(tag.ReferencedSOPInstanceUID, inst),
		})
	}
	pixel := b.el(tag.PixelData, dicom.PixelDataInfo{IntentionallyUnprocessed: true, UnprocessedValueData: packed})
	if pixel != nil {
		pixel.RawValueRepresentation = "OB"
	}

	els := append(b.header(SegmentationStorage, o.InstanceUID, implementationUID, "LUNGSEG_SEG_1", date, tm, s),
		// General and Segmentation Series.
		b.str(tag.Modality, "SEG"),
		b.str(tag.SeriesInstanceUID, o.SeriesUID),
		b.str(tag.SeriesNumber, strconv.Itoa(o.SeriesNumber)),
		b.str(tag.SeriesDescription, clip(o.SeriesDescription, 64)),
		b.str(tag.SeriesDate, date),
		b.str(tag.SeriesTime, tm),
		// General and Enhanced General Equipment.
		b.str(tag.Manufacturer, o.Manufacturer),
		b.str(tag.ManufacturerModelName, clip(alg.Name, 64)),
		b.str(tag.DeviceSerialNumber, "1"),
		b.str(tag.SoftwareVersions, clip(alg.Version, 64)),
		// General Image, Segmentation Image, Content Identification.
		b.str(tag.InstanceNumber, "1"),
		// Type 2C: the SEG has no plane orientation, so it is present,
		// empty.
		b.str(tag.PatientOrientation, ""),
		b.str(tag.ContentDate, date),
		b.str(tag.ContentTime, tm),
		b.str(tag.ImageType, "DERIVED", "PRIMARY"),
		b.str(tag.ContentLabel, "NODULES"),
		b.str(tag.ContentDescription, clip(alg.Name+" "+alg.Version, 64)),
		b.str(tag.ContentCreatorName, ""),
		b.str(tag.SegmentationType, "BINARY"),
		b.str(tag.LossyImageCompression, "00"),
		b.seq(tag.SegmentSequence, segment),
		// Image Pixel.
		b.el(tag.SamplesPerPixel, []int{1}),
		b.str(tag.PhotometricInterpretation, "MONOCHROME2"),
		b.el(tag.Rows, []int{rows}),
		b.el(tag.Columns, []int{cols}),
		b.el(tag.BitsAllocated, []int{1}),
		b.el(tag.BitsStored, []int{1}),
		b.el(tag.HighBit, []int{0}),
		b.el(tag.PixelRepresentation, []int{0}),
		pixel,
		// Multi-frame Functional Groups and Dimension.
		b.str(tag.NumberOfFrames, strconv.Itoa(len(frames))),
		b.seq(tag.SharedFunctionalGroupsSequence, shared),
		b.seq(tag.PerFrameFunctionalGroupsSequence, perFrame...),
		b.seq(tag.DimensionOrganizationSequence, []*dicom.Element{b.str(tag.DimensionOrganizationUID, dimOrg)}),
		b.seq(tag.DimensionIndexSequence,
			[]*dicom.Element{
				b.str(tag.DimensionOrganizationUID, dimOrg),
				b.el(tag.DimensionIndexPointer, []int{0x0062, 0x000B}),  // ReferencedSegmentNumber
				b.el(tag.FunctionalGroupPointer, []int{0x0062, 0x000A}), // SegmentIdentificationSequence
				b.str(tag.DimensionDescriptionLabel, "Segment"),
			},
			[]*dicom.Element{
				b.str(tag.DimensionOrganizationUID, dimOrg),
				b.el(tag.DimensionIndexPointer, []int{0x0020, 0x9057}),  // InStackPositionNumber
				b.el(tag.FunctionalGroupPointer, []int{0x0020, 0x9111}), // FrameContentSequence
				b.str(tag.DimensionDescriptionLabel, "Slice"),
			}),
		// Common Instance Reference.
		b.seq(tag.ReferencedSeriesSequence, []*dicom.Element{
			b.str(tag.SeriesInstanceUID, s.SeriesUID),
			b.seq(tag.ReferencedInstanceSequence, refInstances...),
		}),
	)
	if b.err != nil {
		return dicom.Dataset{}, b.err
	}
	sortElements(els)
	return dicom.Dataset{Elements: els}, nil
}

// DefaultSeriesUID is the SeriesInstanceUID a SEG gets when Options
// leave it empty: derived from the source series and the algorithm.
func DefaultSeriesUID(s Series, alg Algorithm) string {
	return derivedUID("lungseg-seg", s, alg, "series")
}

// DefaultInstanceUID is the SOPInstanceUID a SEG gets when Options leave
// it empty: derived from the source series and the algorithm.
func DefaultInstanceUID(s Series, alg Algorithm) string {
	return derivedUID("lungseg-seg", s, alg, "instance")
}

// derivedUID is a UID of an object of kind made from the source series s
// by alg ("unknown" standing for an empty version).
func derivedUID(kind string, s Series, alg Algorithm, part string) string {
	if alg.Version == "" {
		alg.Version = "unknown"
	}
	return dicomwrite.NewUID(kind, s.SeriesUID, alg.Name, alg.Version, part)
}

// implementationUID identifies this writer in the file meta header.
var implementationUID = dicomwrite.NewUID("lungseg", "score/seg", "implementation")

// Write writes the SEG as a Part 10 file.
func Write(w io.Writer, s Series, alg Algorithm, frames []Frame, o Options) error {
	ds, err := Dataset(s, alg, frames, o)
	if err != nil {
		return err
	}
	if err := dicom.Write(w, ds); err != nil {
		return fmt.Errorf("seg: writing: %w", err)
	}
	return nil
}

// Bytes returns the SEG as a Part 10 file.
func Bytes(s Series, alg Algorithm, frames []Frame, o Options) ([]byte, error) {
	var buf bytes.Buffer
	if err := Write(&buf, s, alg, frames, o); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// FromScores gathers the Score messages of one series and one model into
// the SEG's source description and frames: the masks are the scores'
// PredBits at the slices' original resolution. A slice whose id is not its
// instance UID is taken as a frame of a multi-frame (Enhanced CT) source,
// referenced with its frame number; others as CT Image Storage instances.
// Scores of another series or model, or repeated slices, are an error.
func FromScores(scores []*lungsegv1.Score) (Series, Algorithm, []Frame, error) {
	var s Series
	var alg Algorithm
	if len(scores) == 0 {
		return s, alg, nil, ErrNoFrames
	}
	seen := map[string]bool{}
	frames := make([]Frame, 0, len(scores))
	for i, sc := range scores {
		m := sc.GetMeta()
		if m == nil {
			return s, alg, nil, fmt.Errorf("%w: score %d has no slice metadata", ErrMissing, i+1)
		}
		if i == 0 {
			s = Series{StudyUID: m.StudyUid, SeriesUID: m.SeriesUid}
			if !m.SpacingAssumed {
				s.SpacingRowMm, s.SpacingColMm = m.SpacingRowMm, m.SpacingColMm
			}
			alg = Algorithm{Name: sc.Model, Version: sc.ModelVersion}
		} else if m.StudyUid != s.StudyUID || m.SeriesUid != s.SeriesUID || sc.Model != alg.Name {
			return s, alg, nil, fmt.Errorf("seg: score %d is of series %s model %s, not series %s model %s", i+1, m.SeriesUid, sc.Model, s.SeriesUID, alg.Name)
		}
		key := m.InstanceUid + "/" + strconv.Itoa(int(m.Frame))
		if seen[key] {
			return s, alg, nil, fmt.Errorf("seg: slice %s appears twice", m.Id)
		}
		seen[key] = true
		mask, err := imgx.UnpackMask(int(m.Rows), int(m.Cols), sc.PredBits)
		if err != nil {
			return s, alg, nil, fmt.Errorf("seg: slice %s prediction: %w", m.Id, err)
		}
		f := Frame{SOPClassUID: dicomwrite.CTImageStorage, SOPInstanceUID: m.InstanceUid, PositionMm: m.SlicePosition, Mask: mask}
		if m.Id != m.InstanceUid {
			f.SOPClassUID, f.FrameNumber = enhancedCTImageStorage, int(m.Frame)
		}
		frames = append(frames, f)
	}
	return s, alg, frames, nil
}

const enhancedCTImageStorage = "1.2.840.10008.5.1.4.1.1.2.1"
