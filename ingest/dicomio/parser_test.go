package dicomio

// The parser path Decode took before it read the dataset from the scan
// (dataset.go): suyashkumar/dicom's dicom.Parse and accessors on its
// Dataset, kept here as the oracle of TestDecodeMatchesParser and the
// baseline of BenchmarkReadReal. Copied from read.go at commit 76b741a,
// names prefixed with ds.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
)

// parse runs the parser on a file that scan accepted. The parser skips
// the pixel data (SkipPixelData: it neither copies nor converts it);
// fromDataset takes the values from the file's bytes, where scan found
// them, and checks the frame layout itself. A panic in
// the parser (it indexes values it assumes present) is turned into an
// error.
func parse(b []byte) (ds dicom.Dataset, err error) { return parseWithout(b, nil) }

// parseWithout is parse on b less the byte ranges skip (sorted, disjoint,
// whole top-level elements: unparsedRanges), read in place through a
// MultiReader, nothing copied. The parser builds a Go value for every
// element it reads, and the private elements of a scanner's file (a
// Philips CT carries hundreds, in nested private sequences) were most of
// its time, for values Decode never looks at; it also copied the pixel
// data through its buffer to skip it.
func parseWithout(b []byte, skip [][2]int) (ds dicom.Dataset, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = formatErr("", ErrNotDICOM, "parser failed: %v", r)
		}
	}()
	var r io.Reader = bytes.NewReader(b)
	n := len(b)
	if len(skip) > 0 {
		parts := make([]io.Reader, 0, len(skip)+1)
		at := 0
		for _, sk := range skip {
			parts = append(parts, bytes.NewReader(b[at:sk[0]]))
			n -= sk[1] - sk[0]
			at = sk[1]
		}
		r = io.MultiReader(append(parts, bytes.NewReader(b[at:]))...)
	}
	ds, err = dicom.Parse(r, int64(n), nil,
		dicom.SkipPixelData(), dicom.AllowUnknownSpecificCharacterSet())
	if err != nil {
		return ds, formatErr("", ErrNotDICOM, "parsing: %v", err)
	}
	return ds, nil
}

// dsElements is a list of parsed elements to look attributes up in.
type dsElements []*dicom.Element

func (es dsElements) find(t tag.Tag) *dicom.Element {
	for _, e := range es {
		if e.Tag == t {
			return e
		}
	}
	return nil
}

// strs returns the string values of t, trimmed, or nil.
func (es dsElements) strs(t tag.Tag) []string {
	e := es.find(t)
	if e == nil || e.Value == nil || e.Value.ValueType() != dicom.Strings {
		return nil
	}
	v := e.Value.GetValue().([]string)
	out := make([]string, len(v))
	for i, s := range v {
		out[i] = strings.Trim(s, " \x00")
	}
	if len(out) == 1 && out[0] == "" {
		return nil
	}
	return out
}

func (es dsElements) str(t tag.Tag) string {
	if v := es.strs(t); len(v) > 0 {
		return v[0]
	}
	return ""
}

// integer returns a US/SS/UL/SL value or an IS string.
func (es dsElements) integer(t tag.Tag) (int, bool, error) {
	e := es.find(t)
	if e == nil || e.Value == nil {
		return 0, false, nil
	}
	switch v := e.Value.GetValue().(type) {
	case []int:
		if len(v) == 0 {
			return 0, false, nil
		}
		return v[0], true, nil
	case []string:
		s := es.str(t)
		if s == "" {
			return 0, false, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, false, fmt.Errorf("%v: %q is not an integer", t, s)
		}
		return n, true, nil
	}
	return 0, false, fmt.Errorf("%v has a value of type %v", t, e.Value.ValueType())
}

// floats returns DS strings or FL/FD values, all finite.
func (es dsElements) floats(t tag.Tag) ([]float64, error) {
	e := es.find(t)
	if e == nil || e.Value == nil {
		return nil, nil
	}
	var out []float64
	switch v := e.Value.GetValue().(type) {
	case []float64:
		out = v
	case []string:
		for _, s := range es.strs(t) {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, fmt.Errorf("%v: %q is not a number", t, s)
			}
			out = append(out, f)
		}
	default:
		return nil, fmt.Errorf("%v has a value of type %v", t, e.Value.ValueType())
	}
	for _, f := range out {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%v: non-finite value %v", t, f)
		}
	}
	return out, nil
}

// items returns the dsElements of the items of sequence t.
func (es dsElements) items(t tag.Tag) []dsElements {
	e := es.find(t)
	if e == nil || e.Value == nil || e.Value.ValueType() != dicom.Sequences {
		return nil
	}
	var out []dsElements
	for _, it := range e.Value.GetValue().([]*dicom.SequenceItemValue) {
		out = append(out, it.GetValue().([]*dicom.Element))
	}
	return out
}

// dsMacro looks t up inside the functional group macros of an enhanced
// multi-frame item: each element of a functional group item is a sequence
// of one item that holds the attributes.
func dsMacro(group dsElements, t tag.Tag) dsElements {
	for _, e := range group {
		if e.Value == nil || e.Value.ValueType() != dicom.Sequences {
			continue
		}
		for _, it := range e.Value.GetValue().([]*dicom.SequenceItemValue) {
			if es := dsElements(it.GetValue().([]*dicom.Element)); es.find(t) != nil {
				return es
			}
		}
	}
	return nil
}

// dsFrameScope finds where attribute t of frame i lives: the per-frame
// functional group, else the shared one, else the top level.
type dsFrameScope struct {
	top      dsElements
	shared   dsElements
	perFrame []dsElements
}

func (fs dsFrameScope) lookup(i int, t tag.Tag) dsElements {
	if i < len(fs.perFrame) {
		if es := dsMacro(fs.perFrame[i], t); es != nil {
			return es
		}
	}
	if es := dsMacro(fs.shared, t); es != nil {
		return es
	}
	return fs.top
}

// parsedImage is the Decode of commit 76b741a (before the dataset was
// read from the scan): the attributes read from the parser's Dataset ds,
// the pixels from the scan sr.
func parsedImage(ds dicom.Dataset, sr scanResult, b []byte) (*Image, error) {
	ts := sr.uid
	top := dsElements(ds.Elements)
	// The pixel data is the scan's: Decode gives the parser the file
	// without it (parseWithout), and the parser would only have skipped it.
	if !sr.pixelSeen {
		return nil, formatErr("", ErrNoPixelData, "no pixel data element (SOP class %s, modality %q)",
			top.str(tag.SOPClassUID), top.str(tag.Modality))
	}
	if m := top.str(tag.Modality); m != "" && !strings.EqualFold(m, "CT") {
		return nil, formatErr("", ErrNotCT, "modality is %s, not CT", m)
	}
	pf, err := dsPixelLayout(top, ts)
	if err != nil {
		return nil, err
	}
	var raw []byte
	// compressed decodes frame i of an encapsulated syntax (encap.go).
	var compressed func(i int, dst []byte) error
	if _, ok := encapsulatedSyntaxes[ts]; ok {
		if compressed, err = encapsulatedFrames(b, sr.pixelItems, ts, pf); err != nil {
			return nil, err
		}
	} else {
		if sr.pixelUndefined {
			return nil, formatErr("", ErrPixelFormat, "pixel data is encapsulated (undefined length) in the native transfer syntax %s", ts)
		}
		if raw = sr.pixel; raw == nil {
			// The parser found a defined-length PixelData where the scan
			// did not: they disagree on the file's structure.
			return nil, formatErr("", ErrNotDICOM, "the parser and the scan disagree on where the pixel data is")
		}
		need := int64(pf.rows) * int64(pf.cols) * int64(pf.frames) * int64(pf.bitsAllocated/8)
		if n := int64(len(raw)); n != need && !(n == need+1 && need%2 == 1) {
			return nil, formatErr("", ErrPixelFormat, "pixel data has %d bytes, want %d for %d frame(s) of %d×%d at %d bits",
				n, need, pf.frames, pf.rows, pf.cols, pf.bitsAllocated)
		}
	}
	scope := dsFrameScope{top: top}
	if sh := top.items(tag.SharedFunctionalGroupsSequence); len(sh) > 0 {
		scope.shared = sh[0]
	}
	scope.perFrame = top.items(tag.PerFrameFunctionalGroupsSequence)

	img := &Image{
		Study: dicomwrite.StudyAttrs{
			PatientName: top.str(tag.PatientName), PatientID: top.str(tag.PatientID),
			PatientBirthDate: top.str(tag.PatientBirthDate), PatientSex: top.str(tag.PatientSex),
			StudyDate: top.str(tag.StudyDate), StudyTime: top.str(tag.StudyTime), StudyID: top.str(tag.StudyID),
			AccessionNumber: top.str(tag.AccessionNumber), ReferringPhysicianName: top.str(tag.ReferringPhysicianName),
		},
		StudyUID:       top.str(tag.StudyInstanceUID),
		SeriesUID:      top.str(tag.SeriesInstanceUID),
		InstanceUID:    top.str(tag.SOPInstanceUID),
		TransferSyntax: ts,
		Rows:           pf.rows,
		Cols:           pf.cols,
		MultiFrame:     top.find(tag.NumberOfFrames) != nil,
		Frames:         make([]Frame, pf.frames),
	}
	if pf.swap8 {
		// 8-bit samples in a big-endian OW value: the bytes of each 16-bit
		// word are swapped across the whole value, not per frame.
		sw := make([]byte, len(raw))
		for i := range sw {
			if j := i ^ 1; j < len(raw) {
				sw[i] = raw[j]
			}
		}
		raw = sw
	}
	frameBytes := pf.rows * pf.cols * pf.bitsAllocated / 8
	var buf []byte
	if compressed != nil {
		buf = make([]byte, frameBytes)
	}
	for i := range img.Frames {
		fr := &img.Frames[i]
		slope, intercept, err := dsRescale(scope, i)
		if err != nil {
			return nil, err
		}
		if err := checkRescale(pf, slope, intercept); err != nil {
			return nil, err
		}
		src := buf
		if compressed == nil {
			src = raw[i*frameBytes : (i+1)*frameBytes]
		} else if err := compressed(i, buf); err != nil {
			return nil, err
		}
		fr.HU, _ = decodeFrame(make([]int16, pf.rows*pf.cols), src, pf, slope, intercept)
		// Every clamped pixel holds an int16 extreme, so the exact count
		// (per pixel, in float) runs only on a frame that has one: a CT
		// with signed stored values and intercept -1024 can reach below
		// the range in principle, but almost never does.
		if lo, hi := huRange(pf, slope, intercept); (lo < math.MinInt16 || hi > math.MaxInt16) && hasExtreme(fr.HU.Pix) {
			if n, first, v := countOutside(src, pf, slope, intercept); n > 0 {
				fr.Warnings = append(fr.Warnings, fmt.Sprintf(
					"%d of %d pixels outside the int16 HU range clamped to it (the first, at pixel %d (row %d, col %d), is %g HU: RescaleSlope %g and RescaleIntercept %g map the stored values to %g..%g HU)",
					n, len(fr.HU.Pix), first, first/pf.cols, first%pf.cols, v, slope, intercept, lo, hi))
			}
		}
		if fr.SpacingRowMm, fr.SpacingColMm, fr.SpacingAssumed, err = dsSpacing(scope, i); err != nil {
			return nil, err
		}
		if fr.Position, err = dsPosition(scope, i); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func dsPixelLayout(top dsElements, ts string) (pixelFormat, error) {
	pf := pixelFormat{bo: binary.LittleEndian} // decoded compressed frames are little endian
	if n, ok := nativeSyntaxes[ts]; ok {
		pf.bo = n.bo
	}
	get := func(t tag.Tag, def int, required bool) (int, error) {
		v, ok, err := top.integer(t)
		if err != nil {
			return 0, formatErr("", ErrPixelFormat, "%v", err)
		}
		if !ok {
			if required {
				return 0, formatErr("", ErrPixelFormat, "missing %s", tag.DebugString(t))
			}
			return def, nil
		}
		return v, nil
	}
	var err error
	if pf.rows, err = get(tag.Rows, 0, true); err != nil {
		return pf, err
	}
	if pf.cols, err = get(tag.Columns, 0, true); err != nil {
		return pf, err
	}
	if err := imgx.CheckSize(pf.rows, pf.cols); err != nil {
		return pf, formatErr("", ErrTooLarge, "declared size %d×%d: %v", pf.rows, pf.cols, err)
	}
	if pf.frames, err = get(tag.NumberOfFrames, 1, false); err != nil {
		return pf, err
	}
	if pf.frames < 1 || pf.frames > MaxFrames {
		return pf, formatErr("", ErrTooLarge, "NumberOfFrames %d is outside 1..%d", pf.frames, MaxFrames)
	}
	spp, err := get(tag.SamplesPerPixel, 1, false)
	if err != nil {
		return pf, err
	}
	if spp != 1 {
		return pf, formatErr("", ErrPixelFormat, "%d samples per pixel (colour); CT must have 1", spp)
	}
	if pi := strings.ToUpper(top.str(tag.PhotometricInterpretation)); pi != "" && pi != "MONOCHROME1" && pi != "MONOCHROME2" {
		return pf, formatErr("", ErrPixelFormat, "photometric interpretation %s; CT must be MONOCHROME2", pi)
	}
	if pf.bitsAllocated, err = get(tag.BitsAllocated, 0, true); err != nil {
		return pf, err
	}
	if pf.bitsAllocated != 8 && pf.bitsAllocated != 16 {
		return pf, formatErr("", ErrPixelFormat, "BitsAllocated %d; only 8 and 16 are supported", pf.bitsAllocated)
	}
	if pf.bitsStored, err = get(tag.BitsStored, pf.bitsAllocated, false); err != nil {
		return pf, err
	}
	if pf.bitsStored < 1 || pf.bitsStored > pf.bitsAllocated {
		return pf, formatErr("", ErrPixelFormat, "BitsStored %d with BitsAllocated %d", pf.bitsStored, pf.bitsAllocated)
	}
	if pf.highBit, err = get(tag.HighBit, pf.bitsStored-1, false); err != nil {
		return pf, err
	}
	if pf.highBit < pf.bitsStored-1 || pf.highBit >= pf.bitsAllocated {
		return pf, formatErr("", ErrPixelFormat, "HighBit %d with BitsStored %d and BitsAllocated %d", pf.highBit, pf.bitsStored, pf.bitsAllocated)
	}
	rep, err := get(tag.PixelRepresentation, 0, false)
	if err != nil {
		return pf, err
	}
	if rep != 0 && rep != 1 {
		return pf, formatErr("", ErrPixelFormat, "PixelRepresentation %d", rep)
	}
	pf.signed = rep == 1
	if pd := top.find(tag.PixelData); pf.bitsAllocated == 8 && pf.bo == binary.BigEndian && pd.RawValueRepresentation == "OW" {
		pf.swap8 = true
	}
	return pf, nil
}

// dsRescale returns RescaleSlope and RescaleIntercept of frame i (defaults 1
// and 0).
func dsRescale(scope dsFrameScope, i int) (slope, intercept float64, err error) {
	slope, intercept = 1, 0
	if v, err := scope.lookup(i, tag.RescaleSlope).floats(tag.RescaleSlope); err != nil {
		return 0, 0, formatErr("", ErrPixelFormat, "%v", err)
	} else if len(v) > 0 {
		slope = v[0]
	}
	if v, err := scope.lookup(i, tag.RescaleIntercept).floats(tag.RescaleIntercept); err != nil {
		return 0, 0, formatErr("", ErrPixelFormat, "%v", err)
	} else if len(v) > 0 {
		intercept = v[0]
	}
	if slope == 0 {
		return 0, 0, formatErr("", ErrPixelFormat, "RescaleSlope is 0")
	}
	return slope, intercept, nil
}

func dsSpacing(scope dsFrameScope, i int) (row, col float64, assumed bool, err error) {
	v, err := scope.lookup(i, tag.PixelSpacing).floats(tag.PixelSpacing)
	if err != nil {
		return 0, 0, false, formatErr("", ErrPixelFormat, "%v", err)
	}
	switch {
	case len(v) == 0:
		return DefaultSpacingMm, DefaultSpacingMm, true, nil
	case len(v) != 2 || v[0] <= 0 || v[1] <= 0:
		return 0, 0, false, formatErr("", ErrPixelFormat, "PixelSpacing %v is not two positive numbers", v)
	case v[0] < MinSpacingMm || v[0] > MaxSpacingMm || v[1] < MinSpacingMm || v[1] > MaxSpacingMm:
		// Sizes in mm (nodule diameters, the Lung-RADS category) would
		// be wrong by orders of magnitude: refuse rather than guess.
		return 0, 0, false, formatErr("", ErrPixelFormat, "PixelSpacing %g\\%g mm is outside %g..%g mm, not a CT pixel size", v[0], v[1], MinSpacingMm, MaxSpacingMm)
	}
	return v[0], v[1], false, nil
}

func dsPosition(scope dsFrameScope, i int) (float64, error) {
	v, err := scope.lookup(i, tag.ImagePositionPatient).floats(tag.ImagePositionPatient)
	if err != nil {
		return 0, formatErr("", ErrPixelFormat, "%v", err)
	}
	if len(v) == 3 {
		return v[2], nil
	}
	if v, err := scope.top.floats(tag.SliceLocation); err == nil && len(v) > 0 {
		return v[0], nil
	}
	if n, ok, err := scope.top.integer(tag.InstanceNumber); err == nil && ok {
		return float64(n), nil
	}
	return 0, nil
}

// unparsedRanges returns the byte ranges [start, end) of the top-level
// private elements (odd groups) and PixelData elements of a file that
// scanFile accepted, in file order, contiguous ones merged: what the
// parser path of commit 6bcc21c left out (parseWithout).
func unparsedRanges(b []byte, sr *scanResult) [][2]int {
	native, ok := nativeSyntaxes[sr.uid]
	if !ok {
		native.bo = binary.LittleEndian // encapsulated: explicit VR little endian
	}
	start := 144 + int(binary.LittleEndian.Uint32(b[140:])) // after the meta header (scanFile checked it)
	s := &scanner{b: b, pos: start, limits: []int{len(b)}, bo: native.bo, implicit: native.implicit}
	var out [][2]int
	for !s.exhausted() {
		e, err := s.element(0)
		if err != nil {
			panic(err) // scanFile accepted the file
		}
		if e.tag.Group%2 == 1 || e.tag == tag.PixelData {
			if n := len(out); n > 0 && out[n-1][1] == e.off {
				out[n-1][1] = s.pos
			} else {
				out = append(out, [2]int{e.off, s.pos})
			}
		}
	}
	return out
}
