package dicomio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"testing"
	"unsafe"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
)

// decoderPaths are the files the Decoder tests read: every fixture,
// pydicom's test files (CT_small among them; most of the others fail,
// which a Decoder must survive) and, when ../shared/data/ct_series is
// present, up to eight files of each real series (512², native and RLE).
func decoderPaths(t *testing.T) []string {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(fixtures, "*.dcm"))
	pyd, _ := filepath.Glob(filepath.Join(pydicomTF, "*.dcm"))
	paths = append(paths, pyd...)
	ct := filepath.Join(testenv.RepoRoot(t), "..", "shared", "data", "ct_series")
	series, _ := filepath.Glob(filepath.Join(ct, "*"))
	real := 0
	for _, s := range series {
		files, _ := filepath.Glob(filepath.Join(s, "*.dcm"))
		sort.Strings(files)
		step := max(1, len(files)/8)
		for i := 0; i < len(files); i += step {
			paths = append(paths, files[i])
			real++
		}
	}
	if real == 0 {
		t.Logf("no real series in %s: fixtures and pydicom's files only", ct)
	}
	return paths
}

// alternateBySize orders the files that decode by their pixel count,
// largest, smallest, second largest, second smallest..., with the files
// that fail spread between them, so that every decode follows one of
// another size.
func alternateBySize(t *testing.T, paths []string) []string {
	t.Helper()
	type sized struct {
		p string
		n int
	}
	var ok []sized
	var failing []string
	for _, p := range paths {
		img, err := ReadFile(p)
		if err != nil {
			failing = append(failing, p)
			continue
		}
		ok = append(ok, sized{p, img.Rows * img.Cols * len(img.Frames)})
	}
	sort.SliceStable(ok, func(i, j int) bool { return ok[i].n < ok[j].n })
	var out []string
	for i, j := 0, len(ok)-1; i <= j; i, j = i+1, j-1 {
		out = append(out, ok[j].p)
		if i < j {
			out = append(out, ok[i].p)
		}
		if len(failing) > 0 {
			out, failing = append(out, failing[0]), failing[1:]
		}
	}
	out = append(out, failing...)
	distinct := map[int]bool{}
	for _, s := range ok {
		distinct[s.n] = true
	}
	if len(ok) < 20 || len(distinct) < 3 {
		t.Fatalf("only %d files decode, of %d sizes", len(ok), len(distinct))
	}
	return out
}

// withoutPixels is a deep copy of img with every Pix nil: what a caller
// may keep of a Decoder's Image after the next call.
func withoutPixels(img *Image) *Image {
	c := *img
	c.Frames = slices.Clone(img.Frames)
	for i := range c.Frames {
		fr := &c.Frames[i]
		fr.HU = &imgx.HU{Rows: fr.HU.Rows, Cols: fr.HU.Cols}
		fr.Warnings = slices.Clone(fr.Warnings)
	}
	return &c
}

// poison fills the plane d keeps, and the pooled byte buffers and record
// lists it can reach, to their capacity, with junk: a decode that left a
// pixel or byte unwritten would show it.
func poison(d *Decoder, v byte) {
	p := d.plane[:cap(d.plane)]
	for i := range p {
		p[i] = int16(v)<<8 | int16(v) ^ int16(i)
	}
	var bufs []*[]byte
	for range 4 {
		if b, ok := fileBufs.Get().(*[]byte); ok {
			bufs = append(bufs, b)
		}
	}
	for _, b := range bufs {
		full := (*b)[:cap(*b)]
		for i := range full {
			full[i] = v ^ byte(i)
		}
		fileBufs.Put(b)
	}
	fp := getRecords()
	r := (*fp)[:cap(*fp)]
	for i := range r {
		r[i] = record{tag: tag.Tag{Group: 0xffff, Element: 0xffff}, vr: [2]byte{'S', 'Q'}, seq: true, vl: 7, start: int(v), next: i - 1}
	}
	putRecords(fp)
}

// TestDecoderMatchesReadFile: one Decoder, reused across every file in
// alternating order of size (a 512² series file after a 12×16 fixture
// after a multi-frame RLE file...), gives the Image ReadFile gives, pixel
// for pixel, or the same error. In the second pass its plane and the
// pooled buffers are filled with junk before each decode, other junk
// before ReadFile's than before the Decoder's, so that a byte left
// unwritten would differ. Half the files go through Decoder.Decode, half
// through Decoder.ReadFile. What the caller may keep of an Image
// (everything but the pixels) is unchanged by the next decode.
func TestDecoderMatchesReadFile(t *testing.T) {
	paths := alternateBySize(t, decoderPaths(t))
	for _, poisoned := range []bool{false, true} {
		t.Run(fmt.Sprintf("poisoned=%v", poisoned), func(t *testing.T) {
			var d Decoder
			var prev, prevWant *Image
			var prevPath string
			compared := 0
			for k, p := range paths {
				if poisoned {
					poison(&d, byte(2*k))
				}
				want, werr := ReadFile(p)
				if poisoned {
					poison(&d, byte(2*k+1))
				}
				var got *Image
				var gerr error
				if k%2 == 0 {
					got, gerr = d.ReadFile(p)
				} else {
					b, err := os.ReadFile(p)
					if err != nil {
						t.Fatal(err)
					}
					got, gerr = d.Decode(p, b)
				}
				switch {
				case werr != nil || gerr != nil:
					if werr == nil || gerr == nil || werr.Error() != gerr.Error() {
						t.Errorf("%s after %s: Decoder error %v, ReadFile error %v", p, prevPath, gerr, werr)
					}
				case !reflect.DeepEqual(got, want):
					t.Errorf("%s after %s: the Decoder's Image differs from ReadFile's", p, prevPath)
					for i := range min(len(got.Frames), len(want.Frames)) {
						if j := firstDiff(got.Frames[i].HU.Pix, want.Frames[i].HU.Pix); j >= 0 {
							t.Errorf("  frame %d: pixel %d is %d, want %d", i+1, j, got.Frames[i].HU.Pix[j], want.Frames[i].HU.Pix[j])
						}
					}
				default:
					compared++
				}
				if prev != nil && !reflect.DeepEqual(withoutPixels(prev), withoutPixels(prevWant)) {
					t.Errorf("%s: the Image's attributes changed when %s was decoded next", prevPath, p)
				}
				prev, prevWant, prevPath = nil, nil, p
				if gerr == nil {
					prev, prevWant = got, want
				}
			}
			t.Logf("%d of %d files decoded alike", compared, len(paths))
		})
	}
}

// sameMemory reports whether a and b start at the same address.
func sameMemory(a, b []int16) bool {
	return len(a) > 0 && len(b) > 0 && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// TestDecoderReusesPlanes pins down the ownership the Decoder documents:
// its second Image's pixels are in the first one's memory (which now
// shows the second file's pixels), the frames of one Image do not
// overlap (nor can an append to one frame run into the next), and the
// package's ReadFile never shares memory between Images.
func TestDecoderReusesPlanes(t *testing.T) {
	a, b := filepath.Join(fixtures, "ct_explicit_le.dcm"), filepath.Join(fixtures, "ct_12bit_signed.dcm")
	wa, err := ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	wb, err := ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if wa.Rows != wb.Rows || wa.Cols != wb.Cols || reflect.DeepEqual(wa.Frames[0].HU.Pix, wb.Frames[0].HU.Pix) {
		t.Fatalf("the fixtures must be of one size with other pixels: %d×%d, %d×%d", wa.Rows, wa.Cols, wb.Rows, wb.Cols)
	}
	if sameMemory(wa.Frames[0].HU.Pix, wb.Frames[0].HU.Pix) {
		t.Error("ReadFile gave two Images the same pixel memory")
	}
	var d Decoder
	ga, err := d.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	keep := slices.Clone(ga.Frames[0].HU.Pix) // what a caller must do to keep them
	gb, err := d.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !sameMemory(ga.Frames[0].HU.Pix, gb.Frames[0].HU.Pix) {
		t.Error("the Decoder did not reuse its plane for a file of the same size")
	}
	if !slices.Equal(ga.Frames[0].HU.Pix, wb.Frames[0].HU.Pix) || !slices.Equal(keep, wa.Frames[0].HU.Pix) {
		t.Error("the first Image's pixels should now be the second file's, and the copy the first's")
	}

	mf, err := d.ReadFile(filepath.Join(fixtures, "rle_multiframe.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := ReadFile(filepath.Join(fixtures, "rle_multiframe.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	if len(mf.Frames) < 2 {
		t.Fatalf("%d frames", len(mf.Frames))
	}
	for i, fr := range mf.Frames {
		if len(fr.HU.Pix) != mf.Rows*mf.Cols || cap(fr.HU.Pix) != len(fr.HU.Pix) {
			t.Errorf("frame %d: %d pixels, capacity %d, for %d×%d", i+1, len(fr.HU.Pix), cap(fr.HU.Pix), mf.Rows, mf.Cols)
		}
		fr.HU.Pix = append(fr.HU.Pix, 1) // must reallocate
	}
	for i, fr := range mf.Frames[:len(mf.Frames)-1] {
		if !slices.Equal(fr.HU.Pix[:len(fr.HU.Pix)-1], want.Frames[i].HU.Pix) {
			t.Errorf("frame %d changed by an append to a frame", i+1)
		}
	}
	if !reflect.DeepEqual(mf.Frames[len(mf.Frames)-1].HU.Pix[:mf.Rows*mf.Cols], want.Frames[len(mf.Frames)-1].HU.Pix) {
		t.Error("last frame changed")
	}
}

// TestDecoderRead: Decoder.Read emits the items Read emits (same
// metadata, same pixels while fn runs), and the pixels of an item are
// the Decoder's: a later file overwrites them, as documented.
func TestDecoderRead(t *testing.T) {
	files := []string{"ct_explicit_le.dcm", "ct_12bit_signed.dcm", "rle_multiframe.dcm", "ct_8bit.dcm", "ct_explicit_le.dcm"}
	collect := func(read func(context.Context, string, string, string, ingest.EmitFunc) error) (items []ingest.Item, pix [][]int16) {
		for _, f := range files {
			err := read(context.Background(), filepath.Join(fixtures, f), fixtures, "", func(it ingest.Item) error {
				if it.Err != nil {
					return it.Err
				}
				items = append(items, it)
				pix = append(pix, slices.Clone(it.HU.Pix)) // copied before fn returns
				return nil
			})
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		}
		return items, pix
	}
	var d Decoder
	want, wantPix := collect(Read)
	got, gotPix := collect(d.Read)
	if len(got) != len(want) || len(got) < 6 {
		t.Fatalf("%d items, Read %d", len(got), len(want))
	}
	overwritten := 0
	for i := range got {
		if !reflect.DeepEqual(got[i].Meta, want[i].Meta) {
			t.Errorf("item %d: meta %v, Read's %v", i, got[i].Meta, want[i].Meta)
		}
		if !slices.Equal(gotPix[i], wantPix[i]) {
			t.Errorf("item %d (%s): pixels differ from Read's while fn ran", i, got[i].Meta.Id)
		}
		if !slices.Equal(want[i].HU.Pix, wantPix[i]) {
			t.Errorf("item %d (%s): Read's pixels changed after fn returned", i, want[i].Meta.Id)
		}
		if !slices.Equal(got[i].HU.Pix, gotPix[i]) {
			overwritten++
		}
	}
	if overwritten == 0 {
		t.Error("no pixels of Decoder.Read's items were reused: the test shows nothing")
	}
}

// FuzzDecoderMatchesDecode: on any input, a Decoder reused across inputs
// (its buffers filled with junk before each) gives what Decode gives.
func FuzzDecoderMatchesDecode(f *testing.F) {
	addFixtureSeeds(f)
	var d Decoder
	n := 0
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 64<<10 {
			return
		}
		n++
		poison(&d, byte(n))
		want, werr := Decode("fuzz", b)
		got, gerr := d.Decode("fuzz", b)
		switch {
		case werr != nil || gerr != nil:
			if werr == nil || gerr == nil || werr.Error() != gerr.Error() || !errors.Is(gerr, sentinelOf(werr)) {
				t.Fatalf("Decoder error %v, Decode error %v", gerr, werr)
			}
		case !reflect.DeepEqual(got, want):
			t.Fatalf("Decoder Image %+v, Decode %+v", got, want)
		}
	})
}
