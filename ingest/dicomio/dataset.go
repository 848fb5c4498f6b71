package dicomio

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/charset"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// dataset is what scanFile keeps of a file's dataset: the header of each
// element and where its value lies in the file, nothing copied. Values
// are read on demand by the accessors of elements, with the rules of the
// parser of suyashkumar/dicom, which Decode used before (its Dataset gave
// the same values; TestDecodeMatchesParser compares the two):
//
//   - VR: as written (explicit VR), else the dictionary's first VR (OW
//     for PixelData and OverlayData), else UN;
//   - the value's type follows tag.GetVRKind: US, SS, UL, SL and AT are
//     integers (AT read as 16-bit words, as the parser does), FL and FD
//     floats (an FL through its shortest decimal form, as the parser
//     does), OB, OW and UN of defined length bytes, SQ and UN of
//     undefined length sequences, DA one string, every other VR strings
//     split on `\`;
//   - numbers in the file's byte order;
//   - text decoded through the character set named by the last top-level
//     Specific Character Set before the element (the parser decodes every
//     string value after it, whatever its VR, with the set's ideographic
//     decoder: the first one named, the second when there are several);
//     strings split on `\` after decoding and trimmed of spaces and NULs.
//
// One difference: the parser decoded every string when it read it, so a
// value its character set could not decode failed the file even where
// Decode does not look; here it fails the file only when read (x/text's
// decoders replace undecodable bytes with U+FFFD rather than fail, so
// neither happens in practice).
type dataset struct {
	b    []byte
	bo   binary.ByteOrder
	flat []record
	// charsets are the top-level Specific Character Set elements, in
	// file order.
	charsets []charsetAt
	// err is the first error of decoding text through a character set:
	// fromDataset reports it (the parser failed on it).
	err error
}

// charsetAt is a top-level Specific Character Set element (its index in
// flat) and, once needed, the coding system it names.
type charsetAt struct {
	elem   int
	parsed bool
	cs     charset.CodingSystem
}

// elements is a list of sibling elements of a dataset (the top level, or
// the elements of one item): flat[lo:hi], stepping by next.
type elements struct {
	ds     *dataset
	lo, hi int
}

// VR returns the VR of r.
func (r *record) VR() string { return vrName(r.vr[:]) }

// top returns the top-level elements of ds.
func (ds *dataset) top() elements { return elements{ds: ds, lo: 0, hi: len(ds.flat)} }

// index returns the index in flat of the first element with tag t, or -1.
func (es elements) index(t tag.Tag) int {
	if es.ds == nil {
		return -1
	}
	for i := es.lo; i < es.hi; i = es.ds.flat[i].next {
		if es.ds.flat[i].tag == t {
			return i
		}
	}
	return -1
}

// find returns the first element with tag t, or nil.
func (es elements) find(t tag.Tag) *record {
	if i := es.index(t); i >= 0 {
		return &es.ds.flat[i]
	}
	return nil
}

// itemsAt returns the elements of each item of the sequence at index i:
// its items follow it in flat, each followed by its elements.
func (ds *dataset) itemsAt(i int) []elements {
	var out []elements
	for j := i + 1; j < ds.flat[i].next; j = ds.flat[j].next {
		out = append(out, elements{ds: ds, lo: j + 1, hi: ds.flat[j].next})
	}
	return out
}

// value returns the bytes of e's value (nil for an undefined length).
func (ds *dataset) value(e *record) []byte {
	if e.vl == tag.VLUndefinedLength {
		return nil
	}
	return ds.b[e.start : e.start+int(e.vl)]
}

// valueType is the type the parser gives the value of e.
func valueType(e *record) dicom.ValueType {
	switch tag.GetVRKind(e.tag, e.VR()) {
	case tag.VRItem:
		return dicom.SequenceItem
	case tag.VRPixelData:
		return dicom.PixelData
	case tag.VRBytes:
		return dicom.Bytes
	case tag.VRUInt16List, tag.VRUInt32List, tag.VRInt16List, tag.VRInt32List, tag.VRTagList:
		return dicom.Ints
	case tag.VRFloat32List, tag.VRFloat64List:
		return dicom.Floats
	case tag.VRSequence:
		return dicom.Sequences
	case tag.VRUnknown:
		if e.seq {
			return dicom.Sequences
		}
		return dicom.Bytes
	}
	return dicom.Strings
}

// typeName names a value type in errors.
func typeName(v dicom.ValueType) string {
	switch v {
	case dicom.Strings:
		return "strings"
	case dicom.Bytes:
		return "bytes"
	case dicom.Ints:
		return "integers"
	case dicom.PixelData:
		return "pixel data"
	case dicom.SequenceItem:
		return "an item"
	case dicom.Sequences:
		return "a sequence"
	case dicom.Floats:
		return "floats"
	}
	return fmt.Sprint(int(v))
}

// needsDecoding reports whether decoding b through a character set can
// change it: every set the parser knows reads the bytes below 0x80 as
// ASCII except ISO 2022's escape (0x1b), which switches sets.
func needsDecoding(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 || c == 0x1b {
			return true
		}
	}
	return false
}

// text returns the value of the string element e, decoded through the
// character set in force where e lies, as a new string.
func (ds *dataset) text(e *record) string {
	raw := ds.value(e)
	if len(raw) == 0 || len(ds.charsets) == 0 || !needsDecoding(raw) {
		return string(raw)
	}
	var cs *charsetAt
	for i := range ds.charsets {
		if ds.flat[ds.charsets[i].elem].start >= e.start {
			break
		}
		cs = &ds.charsets[i]
	}
	if cs == nil {
		return string(raw)
	}
	if !cs.parsed {
		// The names are read as the parser reads them: the whole value
		// trimmed (unless it is all white space) and split, each name
		// as it is. An unknown set decodes nothing
		// (dicom.AllowUnknownSpecificCharacterSet).
		cs.cs, _ = charset.ParseSpecificCharacterSet(splitParser(ds.text(&ds.flat[cs.elem])))
		cs.parsed = true
	}
	d := cs.cs.Ideographic
	if d == nil {
		return string(raw)
	}
	out, err := d.Bytes(raw)
	if err != nil {
		if ds.err == nil {
			ds.err = &FormatError{Offset: int64(e.start), Err: ErrNotDICOM,
				Msg: fmt.Sprintf("value of %v cannot be decoded through its character set: %v", e.tag, err)}
		}
		return ""
	}
	return string(out)
}

// splitParser splits a string value the way the parser's readString does:
// trimmed of spaces and NULs unless it is all white space, then split on
// `\`, the parts left as they are.
func splitParser(s string) []string {
	if strings.TrimFunc(s, unicode.IsSpace) != "" {
		s = strings.Trim(s, " \x00")
	}
	return strings.Split(s, `\`)
}

// strs returns the string values of t, each trimmed of spaces and NULs,
// or nil (no element, not a string VR, or one empty value).
func (es elements) strs(t tag.Tag) []string {
	e := es.find(t)
	if e == nil || valueType(e) != dicom.Strings {
		return nil
	}
	s := es.ds.text(e)
	var out []string
	if tag.GetVRKind(e.tag, e.VR()) == tag.VRDate {
		out = []string{strings.Trim(s, " \x00")} // the parser does not split dates
	} else {
		out = strings.Split(s, `\`)
		for i, v := range out {
			out[i] = strings.Trim(v, " \x00")
		}
	}
	if len(out) == 1 && out[0] == "" {
		return nil
	}
	return out
}

// str returns the first string value of t, or "".
func (es elements) str(t tag.Tag) string {
	if v := es.strs(t); len(v) > 0 {
		return v[0]
	}
	return ""
}

// firstInt returns the first value of an integer element (US, SS, UL,
// SL, AT), false when it has none.
func (ds *dataset) firstInt(e *record) (int, bool) {
	v := ds.value(e)
	switch e.VR() {
	case "US", "AT":
		if len(v) >= 2 {
			return int(ds.bo.Uint16(v)), true
		}
	case "SS":
		if len(v) >= 2 {
			return int(int16(ds.bo.Uint16(v))), true
		}
	case "UL":
		if len(v) >= 4 {
			return int(ds.bo.Uint32(v)), true
		}
	case "SL":
		if len(v) >= 4 {
			return int(int32(ds.bo.Uint32(v))), true
		}
	}
	return 0, false
}

// integer returns a US/SS/UL/SL value or an IS string.
func (es elements) integer(t tag.Tag) (int, bool, error) {
	e := es.find(t)
	if e == nil {
		return 0, false, nil
	}
	switch vt := valueType(e); vt {
	case dicom.Ints:
		n, ok := es.ds.firstInt(e)
		return n, ok, nil
	case dicom.Strings:
		s := es.str(t)
		if s == "" {
			return 0, false, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, false, fmt.Errorf("%v: %q is not an integer", t, s)
		}
		return n, true, nil
	default:
		return 0, false, fmt.Errorf("%v has a value of type %s", t, typeName(vt))
	}
}

// floats returns DS strings or FL/FD values, all finite.
func (es elements) floats(t tag.Tag) ([]float64, error) {
	e := es.find(t)
	if e == nil {
		return nil, nil
	}
	var out []float64
	switch vt := valueType(e); vt {
	case dicom.Floats:
		v := es.ds.value(e)
		if e.VR() == "FL" {
			for ; len(v) >= 4; v = v[4:] {
				f := math.Float32frombits(es.ds.bo.Uint32(v))
				// The parser reads an FL as the float64 of its shortest
				// decimal form (0.1, not 0.10000000149011612).
				g, err := strconv.ParseFloat(strconv.FormatFloat(float64(f), 'g', -1, 32), 64)
				if err != nil {
					g = float64(f) // NaN and infinities, refused below
				}
				out = append(out, g)
			}
		} else {
			for ; len(v) >= 8; v = v[8:] {
				out = append(out, math.Float64frombits(es.ds.bo.Uint64(v)))
			}
		}
	case dicom.Strings:
		for _, s := range es.strs(t) {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return nil, fmt.Errorf("%v: %q is not a number", t, s)
			}
			out = append(out, f)
		}
	default:
		return nil, fmt.Errorf("%v has a value of type %s", t, typeName(vt))
	}
	for _, f := range out {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%v: non-finite value %v", t, f)
		}
	}
	return out, nil
}

// items returns the elements of the items of sequence t.
func (es elements) items(t tag.Tag) []elements {
	i := es.index(t)
	if i < 0 || valueType(&es.ds.flat[i]) != dicom.Sequences {
		return nil
	}
	return es.ds.itemsAt(i)
}

// macro looks t up inside the functional group macros of an enhanced
// multi-frame item: each element of a functional group item is a sequence
// of one item that holds the attributes.
func macro(group elements, t tag.Tag) elements {
	if group.ds == nil {
		return elements{}
	}
	flat := group.ds.flat
	for i := group.lo; i < group.hi; i = flat[i].next {
		if !flat[i].seq {
			continue
		}
		for j := i + 1; j < flat[i].next; j = flat[j].next {
			if es := (elements{ds: group.ds, lo: j + 1, hi: flat[j].next}); es.find(t) != nil {
				return es
			}
		}
	}
	return elements{}
}

// empty reports whether es is the zero elements (no list).
func (es elements) empty() bool { return es.ds == nil }
