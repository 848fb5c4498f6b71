package dicomwrite

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/frame"
	"github.com/suyashkumar/dicom/pkg/tag"
	"github.com/suyashkumar/dicom/pkg/uid"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// CTImageStorage is the SOP class UID of the files Write makes.
const CTImageStorage = "1.2.840.10008.5.1.4.1.1.2"

// MaxFrames bounds NumberOfFrames of a file read (ingest/dicomio) or
// written (a SEG of a long series).
const MaxFrames = 10000

// StudyAttrs are a source's patient and study attributes, as text.
type StudyAttrs struct {
	PatientName, PatientID, PatientBirthDate, PatientSex string
	StudyDate, StudyTime, StudyID, AccessionNumber       string
	ReferringPhysicianName                               string
}

// implementationUID identifies this writer in the file meta header.
var implementationUID = NewUID("lungseg", "dicomio", "implementation") // unchanged by the move to pkg/dicomwrite

// Series holds what the slices of one synthetic CT series share.
type Series struct {
	StudyUID, SeriesUID, FrameOfReferenceUID string
	// PatientName and PatientID default to "PHANTOM^SYNTHETIC" and
	// "PHANTOM".
	PatientName, PatientID string
	Description            string
	SeriesNumber           int
	// Intercept is RescaleIntercept: stored = HU - Intercept, as signed
	// 16-bit. Use 0 or -1024 (scanners' usual choice); HU values whose
	// stored value would not fit in int16 make Write fail.
	Intercept int
	// SliceThicknessMm is written as SliceThickness when positive.
	SliceThicknessMm float64
}

// Instance is one CT slice to write.
type Instance struct {
	HU                         *imgx.HU
	SpacingRowMm, SpacingColMm float64
	// PositionMm is ImagePositionPatient (x, y, z) of the first pixel; z
	// is also written as SliceLocation.
	PositionMm     [3]float64
	InstanceNumber int
	// UID is the SOPInstanceUID; empty means one derived from the series
	// UID and the instance number.
	UID string
}

// NewUID returns a UID under the 2.25 root (a UUID written as a decimal
// integer) derived from the SHA-256 of parts, so the same parts always
// give the same UID.
func NewUID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	b := h[:16]
	b[6] = b[6]&0x0f | 0x80 // UUID version 8 (custom)
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return "2.25." + new(big.Int).SetBytes(b).String()
}

// formatDS formats v as a DICOM decimal string of at most 16 characters.
func formatDS(v float64) string {
	for prec := 12; prec > 0; prec-- {
		s := strconv.FormatFloat(v, 'g', prec, 64)
		if len(s) <= 16 {
			return s
		}
	}
	return strconv.FormatFloat(v, 'e', 6, 64)
}

func dsList(v ...float64) []string {
	out := make([]string, len(v))
	for i, x := range v {
		out[i] = formatDS(x)
	}
	return out
}

// Dataset builds the dataset of one CT Image Storage file: explicit VR
// little endian, MONOCHROME2, signed 16-bit pixels, RescaleSlope 1 and
// RescaleIntercept s.Intercept.
func Dataset(s Series, in Instance) (dicom.Dataset, error) {
	hu := in.HU
	if hu == nil {
		return dicom.Dataset{}, fmt.Errorf("dicomio: writing: no pixels")
	}
	if err := imgx.CheckSize(hu.Rows, hu.Cols); err != nil {
		return dicom.Dataset{}, fmt.Errorf("dicomio: writing: %w", err)
	}
	if len(hu.Pix) != hu.Rows*hu.Cols {
		return dicom.Dataset{}, fmt.Errorf("dicomio: writing: %w: %d pixels for %d×%d", imgx.ErrShape, len(hu.Pix), hu.Rows, hu.Cols)
	}
	if s.StudyUID == "" || s.SeriesUID == "" {
		return dicom.Dataset{}, fmt.Errorf("dicomio: writing: study and series UIDs are required")
	}
	for _, v := range []float64{in.SpacingRowMm, in.SpacingColMm} {
		if !(v > 0) || math.IsInf(v, 0) {
			return dicom.Dataset{}, fmt.Errorf("dicomio: writing: pixel spacing %v×%v must be positive", in.SpacingRowMm, in.SpacingColMm)
		}
	}
	nf := frame.NewNativeFrame[uint16](16, hu.Rows, hu.Cols, hu.Rows*hu.Cols, 1)
	for i, v := range hu.Pix {
		st := int(v) - s.Intercept
		if st < math.MinInt16 || st > math.MaxInt16 {
			return dicom.Dataset{}, fmt.Errorf("dicomio: writing: HU %d at pixel %d does not fit int16 with intercept %d", v, i, s.Intercept)
		}
		nf.RawData[i] = uint16(int16(st))
	}
	sop := in.UID
	if sop == "" {
		sop = NewUID(s.SeriesUID, "instance", strconv.Itoa(in.InstanceNumber))
	}
	frameOfRef := s.FrameOfReferenceUID
	if frameOfRef == "" {
		frameOfRef = NewUID(s.StudyUID, "frame-of-reference")
	}
	name, pid := s.PatientName, s.PatientID
	if name == "" {
		name = "PHANTOM^SYNTHETIC"
	}
	if pid == "" {
		pid = "PHANTOM"
	}
	str := func(v ...string) []string { return v }
	values := []struct {
		t tag.Tag
		v any
	}{
		{tag.FileMetaInformationVersion, []byte{0, 1}},
		{tag.MediaStorageSOPClassUID, str(CTImageStorage)},
		{tag.MediaStorageSOPInstanceUID, str(sop)},
		{tag.TransferSyntaxUID, str(uid.ExplicitVRLittleEndian)},
		{tag.ImplementationClassUID, str(implementationUID)},
		{tag.ImplementationVersionName, str("LUNGSEG_1")},
		{tag.ImageType, str("DERIVED", "SECONDARY", "AXIAL")},
		{tag.SOPClassUID, str(CTImageStorage)},
		{tag.SOPInstanceUID, str(sop)},
		{tag.StudyDate, str("")},
		{tag.StudyTime, str("")},
		{tag.AccessionNumber, str("")},
		{tag.Modality, str("CT")},
		{tag.Manufacturer, str("lungseg synthetic phantom")},
		{tag.ReferringPhysicianName, str("")},
		{tag.SeriesDescription, str(s.Description)},
		{tag.PatientName, str(name)},
		{tag.PatientID, str(pid)},
		{tag.PatientBirthDate, str("")},
		{tag.PatientSex, str("")},
		{tag.StudyInstanceUID, str(s.StudyUID)},
		{tag.SeriesInstanceUID, str(s.SeriesUID)},
		{tag.StudyID, str("1")},
		{tag.SeriesNumber, str(strconv.Itoa(s.SeriesNumber))},
		{tag.InstanceNumber, str(strconv.Itoa(in.InstanceNumber))},
		{tag.ImagePositionPatient, dsList(in.PositionMm[:]...)},
		{tag.ImageOrientationPatient, str("1", "0", "0", "0", "1", "0")},
		{tag.FrameOfReferenceUID, str(frameOfRef)},
		{tag.PositionReferenceIndicator, str("")},
		{tag.SliceLocation, dsList(in.PositionMm[2])},
		{tag.SamplesPerPixel, []int{1}},
		{tag.PhotometricInterpretation, str("MONOCHROME2")},
		{tag.Rows, []int{hu.Rows}},
		{tag.Columns, []int{hu.Cols}},
		{tag.PixelSpacing, dsList(in.SpacingRowMm, in.SpacingColMm)},
		{tag.BitsAllocated, []int{16}},
		{tag.BitsStored, []int{16}},
		{tag.HighBit, []int{15}},
		{tag.PixelRepresentation, []int{1}},
		{tag.WindowCenter, str("-600")},
		{tag.WindowWidth, str("1500")},
		{tag.RescaleIntercept, dsList(float64(s.Intercept))},
		{tag.RescaleSlope, str("1")},
		{tag.RescaleType, str("HU")},
		{tag.PixelData, dicom.PixelDataInfo{Frames: []*frame.Frame{{NativeData: nf}}}},
	}
	if s.SliceThicknessMm > 0 {
		values = append(values, struct {
			t tag.Tag
			v any
		}{tag.SliceThickness, dsList(s.SliceThicknessMm)})
	}
	ds := dicom.Dataset{}
	for _, kv := range values {
		e, err := dicom.NewElement(kv.t, kv.v)
		if err != nil {
			return dicom.Dataset{}, fmt.Errorf("dicomio: writing %v: %w", kv.t, err)
		}
		ds.Elements = append(ds.Elements, e)
	}
	slices.SortStableFunc(ds.Elements, func(a, b *dicom.Element) int { return a.Tag.Compare(b.Tag) })
	return ds, nil
}

// Write writes one CT Image Storage file.
func Write(w io.Writer, s Series, in Instance) error {
	ds, err := Dataset(s, in)
	if err != nil {
		return err
	}
	if err := dicom.Write(w, ds); err != nil {
		return fmt.Errorf("dicomio: writing: %w", err)
	}
	return nil
}

// WriteFile writes one CT Image Storage file at path, creating folders.
func WriteFile(path string, s Series, in Instance) error {
	var buf bytes.Buffer
	if err := Write(&buf, s, in); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("dicomio: creating folder: %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("dicomio: writing %s: %w", path, err)
	}
	return nil
}
