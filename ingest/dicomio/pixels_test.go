package dicomio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
)

// libraryHU decodes the file at path independently of Decode: the
// library's own pixel path (dicom.Parse with no pixel option, which
// unpacks every sample into a NativeFrame) gives the stored words, and
// the DICOM rules (BitsStored bits ending at HighBit, sign extension for
// PixelRepresentation 1, modality LUT, round half away from zero, clamp
// to int16) are applied here, in float arithmetic.
func libraryHU(t *testing.T, path string) [][]int16 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil)
	if err != nil {
		t.Fatalf("%s: library parse: %v", path, err)
	}
	top := dsElements(ds.Elements)
	num := func(tg tag.Tag, def float64) float64 { return numIn(t, path, top, tg, def) }
	bitsStored := int(num(tag.BitsStored, 0))
	highBit := int(num(tag.HighBit, float64(bitsStored-1)))
	signed := num(tag.PixelRepresentation, 0) == 1
	// Enhanced multi-frame files put the modality LUT in the frame's
	// functional groups (per frame, else shared), anywhere inside them.
	var perFrame []*dicom.Element
	if e := top.find(tag.PerFrameFunctionalGroupsSequence); e != nil {
		for _, it := range e.Value.GetValue().([]*dicom.SequenceItemValue) {
			perFrame = append(perFrame, &dicom.Element{Value: it})
		}
	}
	shared := top.find(tag.SharedFunctionalGroupsSequence)
	lut := func(i int, tg tag.Tag, def float64) float64 {
		if i < len(perFrame) {
			if e := deepFind(perFrame[i], tg); e != nil {
				return numIn(t, path, dsElements{e}, tg, def)
			}
		}
		if e := deepFind(shared, tg); e != nil {
			return numIn(t, path, dsElements{e}, tg, def)
		}
		return num(tg, def)
	}
	info := top.find(tag.PixelData).Value.GetValue().(dicom.PixelDataInfo)
	var out [][]int16
	for fi, f := range info.Frames {
		slope, intercept := lut(fi, tag.RescaleSlope, 1), lut(fi, tag.RescaleIntercept, 0)
		nf, err := f.GetNativeFrame()
		if err != nil {
			t.Fatal(err)
		}
		var words []int
		switch v := nf.RawDataSlice().(type) {
		case []uint8:
			for _, w := range v {
				words = append(words, int(w))
			}
		case []uint16:
			for _, w := range v {
				words = append(words, int(w))
			}
		default:
			t.Fatalf("%s: samples of type %T", path, v)
		}
		if len(words) != nf.Rows()*nf.Cols() {
			t.Fatalf("%s: %d samples for %d×%d", path, len(words), nf.Rows(), nf.Cols())
		}
		hu := make([]int16, 0, len(words))
		for _, word := range words {
			{
				stored := (word >> (highBit + 1 - bitsStored)) & (1<<bitsStored - 1)
				if signed && stored >= 1<<(bitsStored-1) {
					stored -= 1 << bitsStored
				}
				h := math.Round(float64(stored)*slope + intercept)
				hu = append(hu, int16(max(math.MinInt16, min(math.MaxInt16, h))))
			}
		}
		out = append(out, hu)
	}
	return out
}

// numIn returns the number of element tg of es (an int or a decimal
// string), or def when it is absent.
func numIn(t *testing.T, path string, es dsElements, tg tag.Tag, def float64) float64 {
	t.Helper()
	e := es.find(tg)
	if e == nil {
		return def
	}
	switch v := e.Value.GetValue().(type) {
	case []int:
		return float64(v[0])
	case []string:
		f, err := strconv.ParseFloat(strings.Trim(v[0], " \x00"), 64)
		if err != nil {
			t.Fatalf("%s: %v: %v", path, tg, err)
		}
		return f
	}
	t.Fatalf("%s: %v has type %T", path, tg, e.Value.GetValue())
	return 0
}

// deepFind returns the first element tg inside e's sequences, at any
// depth, or nil.
func deepFind(e *dicom.Element, tg tag.Tag) *dicom.Element {
	if e == nil || e.Value == nil {
		return nil
	}
	var items []*dicom.SequenceItemValue
	switch v := e.Value.GetValue().(type) {
	case []*dicom.SequenceItemValue:
		items = v
	case []*dicom.Element:
		for _, sub := range v {
			if sub.Tag == tg {
				return sub
			}
			if f := deepFind(sub, tg); f != nil {
				return f
			}
		}
		return nil
	default:
		return nil
	}
	for _, it := range items {
		if f := deepFind(&dicom.Element{Value: it}, tg); f != nil {
			return f
		}
	}
	return nil
}

// TestHUMatchesLibraryDecode compares Decode's HU, pixel for pixel, with
// the independent decode of libraryHU on the native fixtures, on
// pydicom's CT_small.dcm and on files written by dicomwrite.Write.
func TestHUMatchesLibraryDecode(t *testing.T) {
	var paths []string
	for _, name := range []string{"ct_explicit_le.dcm", "ct_implicit_unsigned.dcm", "ct_big_endian.dcm",
		"ct_12bit_signed.dcm", "ct_12bit_junk.dcm", "ct_8bit.dcm", "ct_multiframe.dcm", "ct_no_modality.dcm"} {
		paths = append(paths, filepath.Join(fixtures, name))
	}
	if p := filepath.Join(pydicomTF, "CT_small.dcm"); fileExists(p) {
		paths = append(paths, p)
	} else {
		t.Log("pydicom test files not present: CT_small.dcm not compared")
	}
	// Written files: random HU over the whole int16 range that each
	// intercept allows, odd sizes (a pixel count that is not a multiple
	// of 4), and a slice of the extremes.
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	for k, tc := range []struct {
		rows, cols, intercept int
	}{{512, 512, -1024}, {37, 29, 0}, {64, 63, 1024}, {5, 3, -3000}, {130, 77, -1024}} {
		hu := imgx.NewHU(tc.rows, tc.cols)
		lo, hi := max(math.MinInt16, math.MinInt16+tc.intercept), min(math.MaxInt16, math.MaxInt16+tc.intercept)
		for i := range hu.Pix {
			hu.Pix[i] = int16(lo + rng.IntN(hi-lo+1))
		}
		hu.Pix[0], hu.Pix[len(hu.Pix)-1] = int16(lo), int16(hi)
		p := filepath.Join(dir, fmt.Sprintf("w%d.dcm", k))
		s := dicomwrite.Series{StudyUID: dicomwrite.NewUID("t", "study"), SeriesUID: dicomwrite.NewUID("t", "series"), Intercept: tc.intercept}
		if err := dicomwrite.WriteFile(p, s, dicomwrite.Instance{HU: hu, SpacingRowMm: 0.7, SpacingColMm: 0.7, InstanceNumber: k + 1}); err != nil {
			t.Fatal(err)
		}
		img, err := ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(img.Frames[0].HU.Pix, hu.Pix) {
			t.Errorf("%s: read HU differ from the HU written", p)
		}
		paths = append(paths, p)
	}
	for _, p := range paths {
		want := libraryHU(t, p)
		img, err := ReadFile(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if len(img.Frames) != len(want) {
			t.Fatalf("%s: %d frames, library %d", p, len(img.Frames), len(want))
		}
		for i, fr := range img.Frames {
			if j := firstDiff(fr.HU.Pix, want[i]); j >= 0 {
				t.Errorf("%s frame %d: pixel %d is %d, the library's decode %d", p, i+1, j, fr.HU.Pix[j], want[i][j])
			}
		}
	}
}

func firstDiff(a, b []int16) int {
	if len(a) != len(b) {
		return 0
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestDecodeFrameFastPaths checks the integer loops of decodeFrame
// against decodeGeneric (the per-pixel definition) on random samples
// over every 16-bit little-endian layout they take, with intercepts that
// make sums leave the int16 range (clamping, and addS16's fallback), and
// pixel counts that are not multiples of 4, decoding into a plane of junk
// (every pixel must be written).
func TestDecodeFrameFastPaths(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	intercepts := []float64{0, -1024, 1024, -32768, 32767, 40000, -(1 << 20) + 1, 1000.5, -1024}
	slopes := []float64{1, 1, 1, 1, 1, 1, 1, 1, 2.5}
	for _, bits := range []int{16, 15, 12, 10, 1} {
		for shift := 0; shift+bits <= 16; shift += max(1, 16-bits) {
			for _, signed := range []bool{true, false} {
				for k, ic := range intercepts {
					pf := pixelFormat{rows: 7, cols: 13 + k%4, frames: 1, bitsAllocated: 16,
						bitsStored: bits, highBit: shift + bits - 1, signed: signed, bo: binary.LittleEndian}
					raw := make([]byte, 2*pf.rows*pf.cols)
					for i := range raw {
						raw[i] = byte(rng.Uint32())
					}
					// Force the extremes of the stored range in.
					binary.LittleEndian.PutUint16(raw, 0x7fff)
					binary.LittleEndian.PutUint16(raw[2:], 0x8000)
					// dst holds junk first: decodeFrame must write every
					// pixel (a Decoder's plane is reused).
					dst := make([]int16, pf.rows*pf.cols)
					for i := range dst {
						dst[i] = int16(rng.Uint32())
					}
					got, extreme := decodeFrame(dst, raw, pf, slopes[k], ic)
					want := make([]int16, pf.rows*pf.cols)
					decodeGeneric(want, raw, pf, slopes[k], ic)
					if j := firstDiff(got.Pix, want); j >= 0 {
						t.Errorf("bits %d shift %d signed %v slope %v intercept %v: pixel %d is %d, want %d",
							bits, shift, signed, slopes[k], ic, j, got.Pix[j], want[j])
					}
					if !extreme && hasExtreme(want) {
						t.Errorf("bits %d shift %d signed %v slope %v intercept %v: an int16 extreme not reported",
							bits, shift, signed, slopes[k], ic)
					}
				}
			}
		}
	}
}

// TestAddS16 checks the SWAR loop lane by lane, and that it reports the
// sums that leave the int16 range in any lane and in the tail.
func TestAddS16(t *testing.T) {
	for _, tc := range []struct {
		x        []int16
		ic       int16
		overflow bool
	}{
		{[]int16{0, 1, -1, 32767, -32768, 100, -100, 5}, 0, false},
		{[]int16{24, 1000, -1000, 2000, 31743, -31744, 7, 9, 11}, -1024, false},
		{[]int16{24, 1000, -1000, 2000, -31745, 0, 0, 0}, -1024, true}, // lane 4
		{[]int16{1, 2, 3, 32767}, 1, true},                             // lane 3, upwards
		{[]int16{1, 2, 3, 4, -32768}, -1, true},                        // the tail
		{[]int16{-32768, -32768, 32767, 32767}, 0, false},
		{[]int16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32000, 0, 0, 0}, 800, true},        // second word of a step
		{[]int16{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 31967, 0, 0, 0}, 800, false},       // just fits
		{[]int16{9, 8, 7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7}, -32761, false}, // to the bottom
	} {
		raw := make([]byte, 2*len(tc.x))
		for i, v := range tc.x {
			binary.LittleEndian.PutUint16(raw[2*i:], uint16(v))
		}
		dst := make([]int16, len(tc.x))
		if ov := addS16(dst, raw, tc.ic); ov != tc.overflow {
			t.Errorf("%v + %d: overflow %v, want %v", tc.x, tc.ic, ov, tc.overflow)
			continue
		}
		if tc.overflow {
			continue
		}
		for i, v := range tc.x {
			if want := v + tc.ic; dst[i] != want {
				t.Errorf("%v + %d: pixel %d is %d, want %d", tc.x, tc.ic, i, dst[i], want)
			}
		}
	}
}

// TestAddSatS16 checks addSatS16 (SSE2 on amd64, SWAR with a clamping
// fallback elsewhere or with -tags purego) against a per-pixel clamped
// sum, for every length up to 40 (blocks and tails) and a 512×512 frame,
// with intercepts that saturate both ways.
func TestAddSatS16(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	lengths := make([]int, 0, 42)
	for n := range 41 {
		lengths = append(lengths, n)
	}
	lengths = append(lengths, 512*512)
	for _, ic := range []int16{0, -1024, 1024, math.MinInt16, math.MaxInt16, -1} {
		for _, n := range lengths {
			raw := make([]byte, 2*n)
			for i := range raw {
				raw[i] = byte(rng.Uint32())
			}
			if n >= 2 {
				binary.LittleEndian.PutUint16(raw, 0x8000)     // -32768
				binary.LittleEndian.PutUint16(raw[2:], 0x7fff) // 32767
			}
			got := make([]int16, n)
			if ext := addSatS16(got, raw, ic); ext != hasExtreme(got) {
				t.Fatalf("length %d intercept %d: extreme %v, hasExtreme %v", n, ic, ext, !ext)
			}
			for i := range got {
				v := int32(int16(binary.LittleEndian.Uint16(raw[2*i:]))) + int32(ic)
				if want := int16(max(math.MinInt16, min(math.MaxInt16, v))); got[i] != want {
					t.Fatalf("length %d intercept %d: pixel %d is %d, want %d", n, ic, i, got[i], want)
				}
			}
		}
	}
}

// TestMaskAddSatS16 checks maskAddSatS16 (SSE2 on amd64, decodeLE16
// elsewhere) against the per-pixel definition (decodeGeneric) for unsigned
// samples of 8 to 15 bits at the bottom of the word with random high bits
// set, every length up to 40 and a 512×512 frame, with intercepts that
// saturate both ways.
func TestMaskAddSatS16(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	lengths := make([]int, 0, 42)
	for n := range 41 {
		lengths = append(lengths, n)
	}
	lengths = append(lengths, 512*512)
	for _, bits := range []int{8, 12, 15} {
		for _, ic := range []int16{0, -1024, 1024, math.MinInt16, math.MaxInt16} {
			for _, n := range lengths {
				raw := make([]byte, 2*n)
				for i := range raw {
					raw[i] = byte(rng.Uint32())
				}
				pf := pixelFormat{rows: 1, cols: n, frames: 1, bitsAllocated: 16, bitsStored: bits, highBit: bits - 1, bo: binary.LittleEndian}
				want := make([]int16, n)
				decodeGeneric(want, raw, pf, 1, float64(ic))
				got := make([]int16, n)
				if ext := maskAddSatS16(got, raw, bits, ic); ext != hasExtreme(got) {
					t.Fatalf("%d bits, length %d, intercept %d: extreme %v, hasExtreme %v", bits, n, ic, ext, !ext)
				}
				if !slices.Equal(got, want) {
					for i := range got {
						if got[i] != want[i] {
							t.Fatalf("%d bits, length %d, intercept %d: pixel %d is %d, want %d", bits, n, ic, i, got[i], want[i])
						}
					}
				}
			}
		}
	}
}

// TestReadFileBufferReuse checks that ReadFile's pooled file buffers
// leak into no Image: images read earlier keep their HU while other
// files are read, concurrently, into the same buffers.
func TestReadFileBufferReuse(t *testing.T) {
	dir := t.TempDir()
	const files = 4
	want := make([][]int16, files)
	paths := make([]string, files)
	for k := range files {
		hu := imgx.NewHU(64, 48)
		for i := range hu.Pix {
			hu.Pix[i] = int16((i*(k+3))%3000 - 1500)
		}
		want[k], paths[k] = hu.Pix, filepath.Join(dir, fmt.Sprintf("r%d.dcm", k))
		s := dicomwrite.Series{StudyUID: dicomwrite.NewUID("r", "study"), SeriesUID: dicomwrite.NewUID("r", "series"), Intercept: -1024}
		if err := dicomwrite.WriteFile(paths[k], s, dicomwrite.Instance{HU: hu, SpacingRowMm: 1, SpacingColMm: 1, InstanceNumber: k + 1}); err != nil {
			t.Fatal(err)
		}
	}
	kept := make([]*Image, files)
	for k, p := range paths {
		img, err := ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		kept[k] = img
	}
	errs := make(chan error, files)
	for w := range files {
		go func() {
			for r := range 25 {
				k := (w + r) % files
				img, err := ReadFile(paths[k])
				if err == nil && !slices.Equal(img.Frames[0].HU.Pix, want[k]) {
					err = fmt.Errorf("%s: HU differ when read concurrently", paths[k])
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range files {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for k, img := range kept {
		if !slices.Equal(img.Frames[0].HU.Pix, want[k]) {
			t.Errorf("%s: HU of an image read earlier changed", paths[k])
		}
	}
}

// TestSaturatingAddsReportExtremes: addSatS16 and maskAddSatS16 report
// an int16 extreme in their output wherever it lies (every lane of the
// eight-pixel steps, the tail), from a sum that saturates or one that
// lands on it exactly, and report none in a frame without one.
func TestSaturatingAddsReportExtremes(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 16, 23, 512 * 512} {
		raw := make([]byte, 2*n)
		for i := range n {
			binary.LittleEndian.PutUint16(raw[2*i:], uint16(i*37%2000))
		}
		dst := make([]int16, n)
		if addSatS16(dst, raw, -1024) || maskAddSatS16(dst, raw, 12, -1024) {
			t.Errorf("n=%d: an extreme reported in a frame without one", n)
		}
		for _, j := range []int{0, 1, 5, 7, 8, 15, n - 3, n - 1} {
			if j < 0 || j >= n {
				continue
			}
			for _, tc := range []struct {
				stored uint16
				ic     int16
				masked bool
			}{
				{0x8000 + 500, -1024, false}, // saturates down
				{0x7fff - 500, 1024, false},  // saturates up
				{0x8000, 0, false},           // lands on -32768
				{0x0fff, math.MaxInt16 - 0x0fff, true},
				{0x0fff, math.MaxInt16 - 0x0ffe, true},
			} {
				r := slices.Clone(raw)
				binary.LittleEndian.PutUint16(r[2*j:], tc.stored)
				var ext bool
				if tc.masked {
					ext = maskAddSatS16(dst, r, 12, tc.ic)
				} else {
					ext = addSatS16(dst, r, tc.ic)
				}
				if !ext {
					t.Errorf("n=%d: stored %#x at %d with intercept %d (masked %v): no extreme reported", n, tc.stored, j, tc.ic, tc.masked)
				}
			}
		}
	}
}

// TestHasExtreme: an int16 extreme anywhere (in the eight-pixel steps or the
// tail) is found; a frame without one is not flagged.
func TestHasExtreme(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 64, 67} {
		pix := make([]int16, n)
		for i := range pix {
			pix[i] = int16(i*37%2000 - 1000)
		}
		if hasExtreme(pix) {
			t.Errorf("n=%d: no extreme, reported one", n)
		}
		for i := range n {
			for _, v := range []int16{math.MinInt16, math.MaxInt16} {
				q := slices.Clone(pix)
				q[i] = v
				if !hasExtreme(q) {
					t.Errorf("n=%d: %d at %d not found", n, v, i)
				}
			}
		}
	}
}
