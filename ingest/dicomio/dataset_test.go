package dicomio

import (
	"encoding/binary"
	"errors"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/suyashkumar/dicom/pkg/tag"
	"github.com/suyashkumar/dicom/pkg/uid"
)

// byteOrder is a byte order that appends.
type byteOrder interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

// testElem is one element of a file built by buildFile: its value is
// written as given (padded to an even length with pad).
type testElem struct {
	tag tag.Tag
	vr  string
	val []byte
}

func str(t tag.Tag, vr, v string) testElem { return testElem{t, vr, []byte(v)} }

// u16 is a US element of one value in byte order bo.
func u16(bo byteOrder, t tag.Tag, v uint16) testElem {
	return testElem{t, "US", bo.AppendUint16(nil, v)}
}

// buildFile writes a Part 10 file by hand: the file meta header, then the
// dataset in explicit VR with byte order bo (the transfer syntax ts must
// agree). Odd string values are padded with a space, odd byte values with
// a NUL.
func buildFile(ts string, bo byteOrder, elems []testElem) []byte {
	put := func(out []byte, bo byteOrder, e testElem) []byte {
		v := e.val
		if len(v)%2 == 1 {
			pad := byte(' ')
			if e.vr == "OB" || e.vr == "UI" {
				pad = 0
			}
			v = append(slices.Clone(v), pad)
		}
		out = bo.AppendUint16(out, e.tag.Group)
		out = bo.AppendUint16(out, e.tag.Element)
		out = append(out, e.vr...)
		if longVL(e.vr) {
			out = append(out, 0, 0)
			out = bo.AppendUint32(out, uint32(len(v)))
		} else {
			out = bo.AppendUint16(out, uint16(len(v)))
		}
		return append(out, v...)
	}
	var meta []byte
	for _, e := range []testElem{
		{tag.FileMetaInformationVersion, "OB", []byte{0, 1}},
		str(tag.MediaStorageSOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tag.MediaStorageSOPInstanceUID, "UI", "1.2.826.0.1.3680043.10.1234.99"),
		str(tag.TransferSyntaxUID, "UI", ts),
	} {
		meta = put(meta, binary.LittleEndian, e)
	}
	out := append(make([]byte, 128), "DICM"...)
	out = put(out, binary.LittleEndian, testElem{tag.FileMetaInformationGroupLength, "UL", binary.LittleEndian.AppendUint32(nil, uint32(len(meta)))})
	out = append(out, meta...)
	for _, e := range elems {
		out = put(out, bo, e)
	}
	return out
}

// ctElems are the elements of a 2×4 CT image of 16-bit signed samples
// 0..7, with the extra elements (sorted in among them by tag).
func ctElems(bo byteOrder, extra ...testElem) []testElem {
	pix := make([]byte, 0, 16)
	for i := range 8 {
		pix = bo.AppendUint16(pix, uint16(i))
	}
	es := []testElem{
		str(tag.SOPClassUID, "UI", "1.2.840.10008.5.1.4.1.1.2"),
		str(tag.SOPInstanceUID, "UI", "1.2.826.0.1.3680043.10.1234.99"),
		str(tag.Modality, "CS", "CT"),
		str(tag.StudyInstanceUID, "UI", "1.2.826.0.1.3680043.10.1234.10"),
		str(tag.SeriesInstanceUID, "UI", "1.2.826.0.1.3680043.10.1234.11"),
		u16(bo, tag.SamplesPerPixel, 1),
		str(tag.PhotometricInterpretation, "CS", "MONOCHROME2"),
		u16(bo, tag.Rows, 2),
		u16(bo, tag.Columns, 4),
		str(tag.PixelSpacing, "DS", `0.5\0.75`),
		u16(bo, tag.BitsAllocated, 16),
		u16(bo, tag.BitsStored, 16),
		u16(bo, tag.HighBit, 15),
		u16(bo, tag.PixelRepresentation, 1),
		str(tag.RescaleIntercept, "DS", "-1024"),
		str(tag.RescaleSlope, "DS", "1"),
		{tag.PixelData, "OW", pix},
	}
	es = append(es, extra...)
	slices.SortStableFunc(es, func(a, b testElem) int {
		return int(uint32(a.tag.Group)<<16|uint32(a.tag.Element)) - int(uint32(b.tag.Group)<<16|uint32(b.tag.Element))
	})
	return es
}

// decodeBoth decodes b with Decode and with the parser path and fails the
// test unless they agree.
func decodeBoth(t *testing.T, name string, b []byte) *Image {
	t.Helper()
	got, gerr := Decode(name, b)
	want, werr := decodeByParser(name, b)
	if gerr != nil || werr != nil {
		t.Fatalf("%s: Decode: %v; the parser path: %v", name, gerr, werr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: Image %+v, the parser path %+v", name, got, want)
	}
	return got
}

// TestCharacterSets: the patient and study attributes (PN, LO, SH) are
// decoded through the Specific Character Set as the parser decodes them
// (ISO 8859-1, UTF-8, Shift_JIS with a trail byte that is a backslash, ISO
// 2022 escapes), left as they are without one or with an unknown one, and
// an element before the Specific Character Set is not decoded with it.
func TestCharacterSets(t *testing.T) {
	le := binary.LittleEndian
	for _, tc := range []struct {
		name, charset string
		raw           []byte // PatientName as written
		want          string
	}{
		{"latin1", "ISO_IR 100", []byte("M\xfcller^J\xfcrgen"), "Müller^Jürgen"},
		{"utf8", "ISO_IR 192", []byte("Żółć^Jan"), "Żółć^Jan"},
		{"none", "", []byte("Ren\xe9"), "Ren\xe9"},
		{"unknown", "ISO_IR 999", []byte("Ren\xe9"), "Ren\xe9"},
		// ソ is 0x83 0x5c in Shift_JIS: its trail byte is not a value
		// separator.
		{"shift_jis", "ISO_IR 13", []byte("\x83\x5c^\x83\x5c"), "ソ^ソ"},
		{"iso2022jp", `\ISO 2022 IR 87`, []byte("Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"), "Yamada^Tarou=山田^太郎"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := []testElem{
				{tag.PatientName, "PN", tc.raw},
				{tag.PatientID, "LO", tc.raw},
				{tag.StudyID, "SH", tc.raw},
				{tag.ReferringPhysicianName, "PN", append(slices.Clone(tc.raw), `\second`...)},
			}
			if tc.charset != "" {
				extra = append(extra, str(tag.SpecificCharacterSet, "CS", tc.charset))
			}
			b := buildFile(uid.ExplicitVRLittleEndian, le, ctElems(le, extra...))
			img := decodeBoth(t, tc.name, b)
			s := img.Study
			if s.PatientName != tc.want || s.PatientID != tc.want || s.StudyID != tc.want || s.ReferringPhysicianName != tc.want {
				t.Errorf("study attributes %q %q %q %q, want %q", s.PatientName, s.PatientID, s.StudyID, s.ReferringPhysicianName, tc.want)
			}
		})
	}
	// (0008,0001) comes before (0008,0005): the parser reads it raw.
	t.Run("before the set", func(t *testing.T) {
		es := ctElems(le, str(tag.SpecificCharacterSet, "CS", "ISO_IR 100"),
			testElem{tag.PatientName, "PN", []byte("\xe9")}, testElem{tag.Tag{Group: 0x0008, Element: 0x0001}, "LO", []byte("\xe9")})
		b := buildFile(uid.ExplicitVRLittleEndian, le, es)
		sr, err := scanFile(b)
		if err != nil {
			t.Fatal(err)
		}
		top := sr.ds.top()
		if got := top.str(tag.Tag{Group: 0x0008, Element: 0x0001}); got != "\xe9" {
			t.Errorf("element before the set: %q, want the raw byte", got)
		}
		if got := top.str(tag.PatientName); got != "é" {
			t.Errorf("element after the set: %q, want é", got)
		}
		decodeBoth(t, "before", b)
	})
	// A Specific Character Set that is not text fails the file, as the
	// parser did.
	t.Run("not text", func(t *testing.T) {
		b := buildFile(uid.ExplicitVRLittleEndian, le, ctElems(le, testElem{tag.SpecificCharacterSet, "US", []byte{1, 0}}))
		_, err := Decode("cs-us", b)
		if _, perr := decodeByParser("cs-us", b); !errors.Is(err, ErrNotDICOM) || perr == nil {
			t.Errorf("Decode: %v (want ErrNotDICOM); the parser path: %v", err, perr)
		}
	})
}

// TestBigEndian8BitOW: 8-bit samples in an OW value of explicit VR big
// endian are byte-swapped words (the parser path of commit 6bcc21c
// dereferenced a PixelData element it no longer had here); in OB they are
// not.
func TestBigEndian8BitOW(t *testing.T) {
	be := binary.BigEndian
	samples := []byte{10, 20, 30, 40, 50, 60, 70, 80}
	for _, vr := range []string{"OW", "OB"} {
		t.Run(vr, func(t *testing.T) {
			val := slices.Clone(samples)
			if vr == "OW" {
				for i := 0; i < len(val); i += 2 { // each 16-bit word big endian
					val[i], val[i+1] = val[i+1], val[i]
				}
			}
			es := ctElems(be)
			for i, e := range es {
				switch e.tag {
				case tag.BitsAllocated, tag.BitsStored:
					es[i] = u16(be, e.tag, 8)
				case tag.HighBit:
					es[i] = u16(be, e.tag, 7)
				case tag.PixelRepresentation:
					es[i] = u16(be, e.tag, 0)
				case tag.PixelData:
					es[i] = testElem{tag.PixelData, vr, val}
				}
			}
			b := buildFile(uid.ExplicitVRBigEndian, be, es)
			img := decodeBoth(t, vr, b)
			for i, v := range img.Frames[0].HU.Pix {
				if want := int16(samples[i]) - 1024; v != want {
					t.Fatalf("pixel %d is %d, want %d", i, v, want)
				}
			}
		})
	}
}

// TestNumericVRs: Rows and the rescale read from the VRs the parser
// decodes as numbers (SS, UL, SL, FL, FD) and from IS, in both byte
// orders, with values the parser reads the same.
func TestNumericVRs(t *testing.T) {
	for _, bo := range []byteOrder{binary.LittleEndian, binary.BigEndian} {
		ts := uid.ExplicitVRLittleEndian
		if bo == binary.BigEndian {
			ts = uid.ExplicitVRBigEndian
		}
		f32 := func(t tag.Tag, v float32) testElem {
			return testElem{t, "FL", bo.AppendUint32(nil, math.Float32bits(v))}
		}
		f64 := func(t tag.Tag, v float64) testElem {
			return testElem{t, "FD", bo.AppendUint64(nil, math.Float64bits(v))}
		}
		for _, tc := range []struct {
			name            string
			rows, slope, ic testElem
			wantSpacing     float64
		}{
			{"SS/FL", testElem{tag.Rows, "SS", bo.AppendUint16(nil, 2)}, f32(tag.RescaleSlope, 0.1), f32(tag.RescaleIntercept, -1024), 0.5},
			{"UL/FD", testElem{tag.Rows, "UL", bo.AppendUint32(nil, 2)}, f64(tag.RescaleSlope, 2), f64(tag.RescaleIntercept, -1000.5), 0.5},
			{"SL/DS", testElem{tag.Rows, "SL", bo.AppendUint32(nil, 2)}, str(tag.RescaleSlope, "DS", " 1.5 "), str(tag.RescaleIntercept, "DS", "-1e3"), 0.5},
			{"IS", str(tag.Rows, "IS", "2 "), str(tag.RescaleSlope, "DS", "1"), str(tag.RescaleIntercept, "DS", "0"), 0.5},
		} {
			t.Run(bo.String()+"/"+tc.name, func(t *testing.T) {
				es := ctElems(bo)
				for i, e := range es {
					switch e.tag {
					case tag.Rows:
						es[i] = tc.rows
					case tag.RescaleSlope:
						es[i] = tc.slope
					case tag.RescaleIntercept:
						es[i] = tc.ic
					}
				}
				img := decodeBoth(t, tc.name, buildFile(ts, bo, es))
				if img.Rows != 2 || img.Frames[0].SpacingRowMm != tc.wantSpacing {
					t.Errorf("rows %d spacing %v", img.Rows, img.Frames[0].SpacingRowMm)
				}
			})
		}
	}
	// A number of the wrong type is an error naming the attribute.
	es := ctElems(binary.LittleEndian)
	for i, e := range es {
		if e.tag == tag.Rows {
			es[i].vr = "OB"
		}
	}
	b := buildFile(uid.ExplicitVRLittleEndian, binary.LittleEndian, es)
	_, err := Decode("rows-ob", b)
	if _, perr := decodeByParser("rows-ob", b); !errors.Is(err, ErrPixelFormat) || !errors.Is(perr, ErrPixelFormat) ||
		!strings.Contains(err.Error(), "rows-ob: (0028,0010) has a value of type bytes") {
		t.Errorf("Rows as OB: %v; the parser path: %v", err, perr)
	}
}

// TestDecodeMatchesParserMutated: on random corruptions of the fixtures
// (bytes changed, the file cut short), Decode and the parser path agree:
// the same Image, or both an error with the same sentinel (the scan runs
// first in both, so what it refuses is refused alike).
func TestDecodeMatchesParserMutated(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(fixtures, "*.dcm"))
	rng := rand.New(rand.NewPCG(11, 12))
	// The parser logs what it tolerates (a delimiter of nonzero length).
	defer log.SetOutput(log.Writer())
	log.SetOutput(io.Discard)
	decoded, failed := 0, 0
	for _, p := range paths {
		good, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for range 150 {
			b := slices.Clone(good)
			switch rng.IntN(4) {
			case 0:
				b = b[:132+rng.IntN(len(b)-132)]
			default:
				for range 1 + rng.IntN(3) {
					b[132+rng.IntN(len(b)-132)] = byte(rng.Uint32())
				}
			}
			got, gerr := Decode("m", b)
			want, werr := decodeByParser("m", b)
			switch {
			case gerr != nil && werr != nil:
				failed++
				if s := sentinelOf(werr); !errors.Is(gerr, s) {
					t.Errorf("%s mutated: error %v, the parser path %v", p, gerr, werr)
				}
			case gerr != nil || werr != nil:
				t.Errorf("%s mutated: error %v, the parser path %v", p, gerr, werr)
			case !reflect.DeepEqual(got, want):
				t.Errorf("%s mutated: Image %+v, the parser path %+v", p, got, want)
			default:
				decoded++
			}
		}
	}
	t.Logf("%d mutated files decoded alike, %d refused alike", decoded, failed)
	if decoded < 100 || failed < 100 {
		t.Errorf("the mutations decoded %d files and refused %d: too few of one kind to compare", decoded, failed)
	}
}

// TestDecodeKeepsNoReference: an Image holds no reference to the file's
// bytes or to the scan's pooled records: overwriting the bytes after
// Decode, and decoding other files at the same time (which reuse the
// records), leaves every Image as a fresh decode gives it.
func TestDecodeKeepsNoReference(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(fixtures, "*.dcm"))
	paths = append(paths, filepath.Join(pydicomTF, "CT_small.dcm"))
	var files [][]byte
	var want []*Image
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if img, err := Decode(p, b); err == nil {
			files, want = append(files, b), append(want, img)
		}
	}
	if len(files) < 10 {
		t.Fatalf("only %d files decode", len(files))
	}
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			for r := range 50 {
				k := (w*7 + r) % len(files)
				b := slices.Clone(files[k])
				img, err := Decode("copy", b)
				if err == nil {
					for i := range b {
						b[i] = 0xff
					}
					if !reflect.DeepEqual(img, want[k]) {
						err = errors.New("an Image changed when its file's bytes were overwritten or other files decoded")
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// FuzzDecodeMatchesParser: on any input, Decode and the parser path it
// replaced agree (the same Image, or errors with the same sentinel).
func FuzzDecodeMatchesParser(f *testing.F) {
	addFixtureSeeds(f)
	log.SetOutput(io.Discard) // the parser logs what it tolerates
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 64<<10 {
			return
		}
		got, gerr := Decode("fuzz", b)
		want, werr := decodeByParser("fuzz", b)
		switch {
		case gerr != nil && werr != nil:
			if s := sentinelOf(werr); !errors.Is(gerr, s) {
				t.Fatalf("error %v, the parser path %v", gerr, werr)
			}
		case gerr != nil || werr != nil:
			t.Fatalf("error %v, the parser path %v", gerr, werr)
		case !reflect.DeepEqual(got, want):
			t.Fatalf("Image %+v, the parser path %+v", got, want)
		}
	})
}

// TestMetaHeaderOutsideGroup2: an element of another group inside the
// file meta header's declared length is refused (the parser listed it
// with the dataset, so Decode read Rows from the meta header).
func TestMetaHeaderOutsideGroup2(t *testing.T) {
	le := binary.LittleEndian
	b := buildFile(uid.ExplicitVRLittleEndian, le, ctElems(le))
	rows := []byte{0x28, 0, 0x10, 0, 'U', 'S', 2, 0, 2, 0}
	metaEnd := 144 + int(le.Uint32(b[140:]))
	b = slices.Concat(b[:metaEnd], rows, b[metaEnd:])
	le.PutUint32(b[140:], uint32(metaEnd-144+len(rows)))
	_, err := Decode("meta", b)
	var fe *FormatError
	if !errors.Is(err, ErrNotDICOM) || !errors.As(err, &fe) || fe.Offset != int64(metaEnd) ||
		!strings.Contains(err.Error(), "file meta header holds element (0028,0010), outside group 0002") {
		t.Errorf("Decode: %v", err)
	}
}
