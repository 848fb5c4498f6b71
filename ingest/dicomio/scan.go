package dicomio

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/suyashkumar/dicom/pkg/tag"
	"github.com/suyashkumar/dicom/pkg/uid"
)

// The scanner is the reader of this package: it walks every element of a
// file once, the way the parser of suyashkumar/dicom v1.1.0 would (same
// tag, VR and length rules, same nesting of sequences, items and
// encapsulated fragments), records the dataset's elements (records:
// header and value range, no copy; dataset.go reads values from them) and
// locates the pixel data. It rejects the file if any declared length runs
// past the end of the file or of its enclosing element: that parser
// allocates a value with make([]byte, vl) before reading it, for any vl
// up to 4 GiB, so a 200-byte file could make it allocate gigabytes
// (TestParserAllocatesDeclaredLengths). Where the parser would do
// something odd but harmless (skip a stray tag inside encapsulated pixel
// data, stop silently at a truncated element) the scanner rejects the
// file instead.

// Scanner limits. Real CT files stay far below them.
const (
	// maxDepth bounds the nesting of sequences.
	maxDepth = 32
	// maxElements bounds the elements, items and fragments of one file
	// (the scan keeps a 32-byte record per element).
	maxElements = 200_000
	// maxNumericBytes bounds the bytes of numeric (US, SS, UL, SL, FL, FD,
	// AT) values of one file (a limit the parser needed: it kept each
	// number as an 8-byte int or float64).
	maxNumericBytes = 16 << 20
)

// Native (uncompressed) transfer syntaxes: the only ones Read accepts.
var nativeSyntaxes = map[string]struct {
	bo       binary.ByteOrder
	implicit bool
}{
	uid.ImplicitVRLittleEndian: {binary.LittleEndian, true},
	uid.ExplicitVRLittleEndian: {binary.LittleEndian, false},
	uid.ExplicitVRBigEndian:    {binary.BigEndian, false},
}

// SyntaxName returns the standard name of a transfer syntax UID, or
// "unknown transfer syntax".
func SyntaxName(ts string) string {
	if info, err := uid.Lookup(ts); err == nil && info.Type == uid.TypeTransferSyntax {
		return info.Name
	}
	return "unknown transfer syntax"
}

type scanner struct {
	b        []byte
	pos      int
	limits   []int // end offsets; the last one is current
	bo       binary.ByteOrder
	implicit bool
	elements int
	numeric  int
	// keep makes element record what it walks in flat (dataset.go).
	keep bool
	flat []record
	// limitsBuf backs limits for the usual nesting depths.
	limitsBuf [8]int
}

// element is the header of one element as the parser reads it.
type element struct {
	tag   tag.Tag
	vr    string
	vl    uint32
	off   int // offset of the tag
	start int // offset of the value
}

// record is what the scan keeps of an element (dataset.go): its header
// and where its value lies in the file, nothing copied. It holds no
// pointer, so a dataset's records are one block the garbage collector
// does not scan.
type record struct {
	tag tag.Tag
	vr  [2]byte
	// seq is true for an element the parser reads as a sequence of items
	// (SQ, or UN of undefined length).
	seq   bool
	vl    uint32
	start int // offset of the value
	// next is the index in flat of the element after this one and its
	// content: the items of a sequence and the elements of an item follow
	// it, depth first.
	next int
}

// errScan is a scanner error before the path is known.
func (s *scanner) fail(sentinel error, format string, args ...any) error {
	return &FormatError{Offset: int64(s.pos), Msg: fmt.Sprintf(format, args...), Err: sentinel}
}

func (s *scanner) limit() int      { return s.limits[len(s.limits)-1] }
func (s *scanner) left() int       { return s.limit() - s.pos }
func (s *scanner) exhausted() bool { return s.left() <= 0 }

// short reports a read of n bytes that does not fit before the current
// limit: a truncated file at the top level, inconsistent lengths inside a
// sequence of defined length.
func (s *scanner) short(what string, n int64) error {
	if len(s.limits) == 1 {
		return s.fail(ErrTruncated, "%s needs %d bytes but the file has %d left", what, n, s.left())
	}
	return s.fail(ErrTruncated, "%s needs %d bytes but its enclosing element has %d left", what, n, s.left())
}

func (s *scanner) take(what string, n int64) ([]byte, error) {
	if n < 0 || n > int64(s.left()) {
		return nil, s.short(what, n)
	}
	b := s.b[s.pos : s.pos+int(n)]
	s.pos += int(n)
	return b, nil
}

// skipValue steps over the value of e (whose header was just read). The
// error message is formatted only on failure: this runs for every element.
func (s *scanner) skipValue(e element) error {
	if int64(e.vl) > int64(s.left()) {
		return s.short(fmt.Sprintf("value of element %v (VR %s)", e.tag, e.vr), int64(e.vl))
	}
	s.pos += int(e.vl)
	return nil
}

func (s *scanner) u16(what string) (uint16, error) {
	b, err := s.take(what, 2)
	if err != nil {
		return 0, err
	}
	return s.bo.Uint16(b), nil
}

func (s *scanner) u32(what string) (uint32, error) {
	b, err := s.take(what, 4)
	if err != nil {
		return 0, err
	}
	return s.bo.Uint32(b), nil
}

// push makes the next vl bytes the current limit; what names them in the
// error (formatted only on failure).
func (s *scanner) push(what func() string, vl uint32) error {
	if int64(vl) > int64(s.left()) {
		return s.short(what(), int64(vl))
	}
	s.limits = append(s.limits, s.pos+int(vl))
	return nil
}

func (s *scanner) pop() { s.limits = s.limits[:len(s.limits)-1] }

func (s *scanner) count() error {
	s.elements++
	if s.elements > maxElements {
		return s.fail(ErrTooLarge, "more than %d elements", maxElements)
	}
	return nil
}

// longVL lists the explicit VRs with a 2-byte reserved field and a 4-byte
// length, as the parser's readVL does.
func longVL(vr string) bool {
	switch vr {
	case "NA", "OB", "OD", "OF", "OL", "OW", "SQ", "UN", "UC", "UR", "UT":
		return true
	}
	return false
}

// header reads a tag, VR and length like the parser's readTag, readVR and
// readVL.
func (s *scanner) header() (element, error) {
	e := element{off: s.pos}
	if err := s.count(); err != nil {
		return e, err
	}
	g, err := s.u16("element tag")
	if err != nil {
		return e, err
	}
	el, err := s.u16("element tag")
	if err != nil {
		return e, err
	}
	e.tag = tag.Tag{Group: g, Element: el}
	if s.implicit || e.tag == tag.Item {
		e.vr = tag.UnknownVR
		if info, err := tag.Find(e.tag); err == nil {
			e.vr = info.VRs[0]
			if e.tag == tag.PixelData || e.tag == tag.OverlayData {
				e.vr = "OW"
			}
		}
		if e.vl, err = s.u32("element length"); err != nil {
			return e, err
		}
		e.start = s.pos
		return e, nil
	}
	vr, err := s.take("element VR", 2)
	if err != nil {
		return e, err
	}
	e.vr = vrName(vr)
	// Delimitation items have no VR; the parser reads the first half of
	// their zero length as one, which is harmless. Any other element
	// must have two upper-case letters (the parser would decode other
	// bytes through the character set, which this scanner does not).
	if g != tag.GroupSeqItem && !(isUpper(vr[0]) && isUpper(vr[1])) {
		return e, s.fail(ErrNotDICOM, "element %v has an invalid VR %q", e.tag, vr)
	}
	if longVL(e.vr) {
		if _, err := s.take("element length", 2); err != nil {
			return e, err
		}
		if e.vl, err = s.u32("element length"); err != nil {
			return e, err
		}
		if e.vl == tag.VLUndefinedLength && (e.vr == "UC" || e.vr == "UR" || e.vr == "UT") {
			return e, s.fail(ErrNotDICOM, "element %v of VR %s has an undefined length", e.tag, e.vr)
		}
	} else {
		v, err := s.u16("element length")
		if err != nil {
			return e, err
		}
		e.vl = uint32(v)
		if v == 0xffff {
			e.vl = tag.VLUndefinedLength
		}
	}
	e.start = s.pos
	return e, nil
}

// numericSize is the size of one value of a numeric VR, or 0.
func numericSize(vr string) uint32 {
	switch vr {
	case "US", "SS", "AT":
		return 2
	case "UL", "SL", "FL":
		return 4
	case "FD":
		return 8
	}
	return 0
}

func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }

// vrName returns the VR b as a string without allocating for the VRs of
// the standard (this runs for every element of an explicit VR file).
func vrName(b []byte) string {
	switch string(b) {
	case "AE":
		return "AE"
	case "AS":
		return "AS"
	case "AT":
		return "AT"
	case "CS":
		return "CS"
	case "DA":
		return "DA"
	case "DS":
		return "DS"
	case "DT":
		return "DT"
	case "FD":
		return "FD"
	case "FL":
		return "FL"
	case "IS":
		return "IS"
	case "LO":
		return "LO"
	case "LT":
		return "LT"
	case "OB":
		return "OB"
	case "OD":
		return "OD"
	case "OF":
		return "OF"
	case "OL":
		return "OL"
	case "OV":
		return "OV"
	case "OW":
		return "OW"
	case "PN":
		return "PN"
	case "SH":
		return "SH"
	case "SL":
		return "SL"
	case "SQ":
		return "SQ"
	case "SS":
		return "SS"
	case "ST":
		return "ST"
	case "SV":
		return "SV"
	case "TM":
		return "TM"
	case "UC":
		return "UC"
	case "UI":
		return "UI"
	case "UL":
		return "UL"
	case "UN":
		return "UN"
	case "UR":
		return "UR"
	case "US":
		return "US"
	case "UT":
		return "UT"
	case "UV":
		return "UV"
	case "NA":
		return "NA"
	}
	return string(b)
}

// element reads one element and its value the way the parser's
// readElement and readValue do. When s.keep is set it appends the element
// to s.flat, followed by its content (the items of a sequence, the
// elements of an item), and sets its next and seq.
func (s *scanner) element(depth int) (element, error) {
	e, err := s.header()
	if err != nil {
		return e, err
	}
	at := -1
	if s.keep {
		at = len(s.flat)
		s.flat = append(s.flat, record{tag: e.tag, vr: [2]byte{e.vr[0], e.vr[1]}, vl: e.vl, start: e.start})
	}
	undefined := e.vl == tag.VLUndefinedLength
	switch kind := tag.GetVRKind(e.tag, e.vr); kind {
	case tag.VRItem:
		err = s.item(e, depth+1)
	case tag.VRPixelData:
		if undefined {
			err = s.fragments(e, true)
		} else {
			err = s.skipValue(e)
		}
	case tag.VRSequence:
		err = s.sequence(e, depth+1)
		s.setSeq(at)
	case tag.VRUnknown:
		if undefined {
			err = s.sequence(e, depth+1)
			s.setSeq(at)
		} else {
			err = s.skipValue(e)
		}
	case tag.VRBytes:
		if undefined {
			err = s.fragments(e, false)
			break
		}
		if e.vr == "OW" && e.vl%2 != 0 {
			return e, s.fail(ErrNotDICOM, "element %v of VR OW has an odd length %d", e.tag, e.vl)
		}
		err = s.skipValue(e)
	case tag.VRUInt16List, tag.VRUInt32List, tag.VRInt16List, tag.VRInt32List, tag.VRTagList,
		tag.VRFloat32List, tag.VRFloat64List:
		size := numericSize(e.vr)
		if undefined || size == 0 || e.vl%size != 0 {
			return e, s.fail(ErrNotDICOM, "element %v of VR %s has a bad length %d", e.tag, e.vr, e.vl)
		}
		s.numeric += int(e.vl)
		if s.numeric > maxNumericBytes {
			return e, s.fail(ErrTooLarge, "more than %d bytes of numeric values", maxNumericBytes)
		}
		err = s.skipValue(e)
	default: // strings and dates
		if undefined {
			return e, s.fail(ErrNotDICOM, "element %v of VR %s has an undefined length", e.tag, e.vr)
		}
		err = s.skipValue(e)
	}
	if at >= 0 && err == nil {
		s.flat[at].next = len(s.flat)
	}
	return e, err
}

// setSeq marks the record at (if any) as a sequence.
func (s *scanner) setSeq(at int) {
	if at >= 0 && at < len(s.flat) {
		s.flat[at].seq = true
	}
}

// dropDelimiter removes a delimitation item that element just recorded:
// the parser keeps none in its sequences and items.
func (s *scanner) dropDelimiter() {
	if s.keep {
		s.flat = s.flat[:len(s.flat)-1]
	}
}

// sequence mirrors readSequence: items until a sequence delimitation item
// (undefined length) or until the declared length is used up.
func (s *scanner) sequence(e element, depth int) error {
	if depth > maxDepth {
		return s.fail(ErrTooLarge, "sequences nested more than %d deep", maxDepth)
	}
	if e.vl == tag.VLUndefinedLength {
		for {
			sub, err := s.element(depth)
			if err != nil {
				return err
			}
			if sub.tag == tag.SequenceDelimitationItem {
				s.dropDelimiter()
				return nil
			}
			if sub.tag != tag.Item {
				return s.fail(ErrNotDICOM, "sequence %v holds element %v, not an item", e.tag, sub.tag)
			}
		}
	}
	if err := s.push(func() string { return fmt.Sprintf("sequence %v", e.tag) }, e.vl); err != nil {
		return err
	}
	for !s.exhausted() {
		sub, err := s.element(depth)
		if err != nil {
			return err
		}
		if sub.tag != tag.Item {
			return s.fail(ErrNotDICOM, "sequence %v holds element %v, not an item", e.tag, sub.tag)
		}
	}
	s.pop()
	return nil
}

// item mirrors readSequenceItem.
func (s *scanner) item(e element, depth int) error {
	if depth > maxDepth {
		return s.fail(ErrTooLarge, "sequences nested more than %d deep", maxDepth)
	}
	if e.vl == tag.VLUndefinedLength {
		for {
			sub, err := s.element(depth)
			if err != nil {
				return err
			}
			if sub.tag == tag.ItemDelimitationItem {
				s.dropDelimiter()
				return nil
			}
		}
	}
	if err := s.push(func() string { return "sequence item" }, e.vl); err != nil {
		return err
	}
	for !s.exhausted() {
		if _, err := s.element(depth); err != nil {
			return err
		}
	}
	s.pop()
	return nil
}

// fragments mirrors the parser's reading of an undefined-length OB/OW
// value or encapsulated pixel data: items of raw bytes (the first one the
// basic offset table) up to a sequence delimitation item. Anything else
// is rejected. For pixel data (offsetTable) the first item, the basic
// offset table, must be present: the parser reads on past a delimiter in
// its place.
func (s *scanner) fragments(e element, offsetTable bool) error {
	for first := true; ; first = false {
		if err := s.count(); err != nil {
			return err
		}
		g, err := s.u16("fragment tag")
		if err != nil {
			return err
		}
		el, err := s.u16("fragment tag")
		if err != nil {
			return err
		}
		vl, err := s.u32("fragment length")
		if err != nil {
			return err
		}
		switch t := (tag.Tag{Group: g, Element: el}); {
		case t == tag.SequenceDelimitationItem && !(first && offsetTable):
			return nil
		case t != tag.Item || vl == tag.VLUndefinedLength:
			return s.fail(ErrNotDICOM, "encapsulated value of %v holds %v (length %#x), not an item", e.tag, t, vl)
		}
		if int64(vl) > int64(s.left()) {
			return s.short(fmt.Sprintf("fragment of %v", e.tag), int64(vl))
		}
		s.pos += int(vl)
	}
}

// scan checks a whole Part 10 file and returns its transfer syntax UID
// and the offset of the first item (the basic offset table) of its
// top-level encapsulated pixel data, or -1. A file in a transfer syntax
// that is neither native nor one of encapsulatedSyntaxes is rejected with
// ErrCompressed right after the file meta header: its dataset is not
// walked.
func scan(b []byte) (string, int, error) {
	ts, err := scanFile(b)
	return ts.uid, ts.pixelItems, err
}

type scanResult struct {
	uid        string
	pixelItems int
	// pixel is the value of the first top-level PixelData element when
	// its length is defined (native pixel data), else nil. It aliases the
	// file's bytes.
	pixel []byte
	// pixelSeen is true once a top-level PixelData element was seen.
	pixelSeen bool
	// pixelUndefined is true when the first top-level PixelData element
	// has an undefined length (encapsulated).
	pixelUndefined bool
	// pixelVR is the VR of the first top-level PixelData element.
	pixelVR string
	// ds holds the dataset's elements (dataset.go): every top-level
	// element but the private ones (odd groups, their creators included;
	// Decode reads nothing of them) and PixelData (described above), with
	// the content of their sequences. The file meta header is not in it.
	ds dataset
}

func scanFile(b []byte) (scanResult, error) { return scanInto(b, nil) }

// scanInto is scanFile keeping the dataset's records in flat (emptied
// first; grown as needed), so that a caller can reuse it.
func scanInto(b []byte, flat []record) (scanResult, error) {
	s := &scanner{b: b, bo: binary.LittleEndian, flat: flat[:0]}
	s.limits = append(s.limitsBuf[:0], len(b))
	if len(b) < 132 || string(b[128:132]) != "DICM" {
		return scanResult{}, s.fail(ErrNotDICOM, "no 128-byte preamble followed by \"DICM\"")
	}
	s.pos = 132
	gl, err := s.element(0)
	if err != nil {
		return scanResult{}, err
	}
	if gl.tag != tag.FileMetaInformationGroupLength || gl.vr != "UL" || gl.vl != 4 {
		return scanResult{}, &FormatError{Offset: int64(gl.off), Err: ErrNotDICOM,
			Msg: fmt.Sprintf("file meta header starts with %v %s of length %d, not (0002,0000) UL", gl.tag, gl.vr, gl.vl)}
	}
	metaLen := binary.LittleEndian.Uint32(b[gl.start:])
	if err := s.push(func() string { return "file meta header" }, metaLen); err != nil {
		return scanResult{}, err
	}
	ts := ""
	for !s.exhausted() {
		e, err := s.element(0)
		if err != nil {
			return scanResult{}, err
		}
		if e.tag.Group != 0x0002 {
			// The parser would list it with the dataset's elements and
			// Decode would read attributes from the meta header.
			return scanResult{}, &FormatError{Offset: int64(e.off), Err: ErrNotDICOM,
				Msg: fmt.Sprintf("file meta header holds element %v, outside group 0002", e.tag)}
		}
		if e.tag == tag.TransferSyntaxUID && ts == "" {
			if e.vr != "UI" {
				return scanResult{}, &FormatError{Offset: int64(e.off), Err: ErrNotDICOM, Msg: "transfer syntax UID has VR " + e.vr}
			}
			v := strings.Trim(string(b[e.start:e.start+int(e.vl)]), " \x00")
			ts, _, _ = strings.Cut(v, `\`)
			if ts == "" {
				ts = "(empty)"
			}
		}
	}
	s.pop()
	if ts == "" {
		return scanResult{}, s.fail(ErrNotDICOM, "file meta header has no transfer syntax UID")
	}
	res := scanResult{uid: ts, pixelItems: -1}
	native, ok := nativeSyntaxes[ts]
	if !ok {
		if encapsulatedSyntaxes[ts] == nil {
			return res, formatErr("", ErrCompressed, "transfer syntax %s (%s) is not supported: only uncompressed pixel data "+
				"(implicit VR little endian, explicit VR little or big endian), RLE Lossless and JPEG Lossless (process 14) "+
				"can be read", ts, SyntaxName(ts))
		}
		native.bo, native.implicit = binary.LittleEndian, false // encapsulated syntaxes are explicit VR little endian
	}
	s.bo, s.implicit = native.bo, native.implicit
	for !s.exhausted() {
		// Top-level private and PixelData elements are walked, not kept.
		s.keep = true
		if s.left() >= 4 {
			g, el := s.bo.Uint16(b[s.pos:]), s.bo.Uint16(b[s.pos+2:])
			s.keep = g%2 == 0 && (tag.Tag{Group: g, Element: el}) != tag.PixelData
		}
		at := len(s.flat)
		e, err := s.element(0)
		if err != nil {
			return res, err
		}
		if e.tag == tag.SpecificCharacterSet && s.keep {
			if k := tag.GetVRKind(e.tag, e.vr); k != tag.VRString && k != tag.VRStringList && k != tag.VRDate {
				return res, &FormatError{Offset: int64(e.off), Err: ErrNotDICOM,
					Msg: fmt.Sprintf("specific character set %v has VR %s, not CS", e.tag, e.vr)}
			}
			res.ds.charsets = append(res.ds.charsets, charsetAt{elem: at})
		}
		if e.tag != tag.PixelData {
			continue
		}
		if !res.pixelSeen {
			res.pixelUndefined = e.vl == tag.VLUndefinedLength
			res.pixelVR = e.vr
			if e.vl != tag.VLUndefinedLength {
				res.pixel = b[e.start : e.start+int(e.vl) : e.start+int(e.vl)]
			}
		}
		res.pixelSeen = true
		if e.vl == tag.VLUndefinedLength {
			res.pixelItems = e.start
		}
	}
	res.ds.b, res.ds.bo, res.ds.flat = b, s.bo, s.flat
	return res, nil
}
