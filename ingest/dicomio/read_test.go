package dicomio

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/pkg/imgx"

	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/testenv"
)

const (
	fixtures  = "testdata"
	python    = "/usr/bin/python3"
	pydicomTF = "/usr/lib/python3/dist-packages/pydicom/data/test_files"
)

// expectedFile is one entry of testdata/expected.json (see make_fixtures.py).
type expectedFile struct {
	Rows, Cols     int
	Frames         [][]int
	Spacing        []float64
	Assumed        bool
	Positions      []float64
	PydicomDiffers bool   `json:"pydicom_differs"`
	MaskPixels     int    `json:"mask_pixels"`
	MaskPixelsF002 int    `json:"mask_pixels_f002"`
	Clamped        int    // pixels clamped to int16 HU, each frame
	Modality       string // from pydicom_hu.py
}

func loadExpected(t testing.TB) map[string]expectedFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtures, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]expectedFile
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func readAll(t testing.TB, path, root, masks string) []ingest.Item {
	t.Helper()
	var items []ingest.Item
	err := Read(context.Background(), path, root, masks, func(it ingest.Item) error {
		items = append(items, it)
		return nil
	})
	if err != nil {
		t.Fatalf("Read(%s) returned %v", path, err)
	}
	return items
}

func toInts(p []int16) []int {
	out := make([]int, len(p))
	for i, v := range p {
		out[i] = int(v)
	}
	return out
}

func TestReadFixtures(t *testing.T) {
	exp := loadExpected(t)
	if len(exp) < 8 {
		t.Fatalf("expected.json lists %d files", len(exp))
	}
	for name, want := range exp {
		t.Run(name, func(t *testing.T) {
			items := readAll(t, filepath.Join(fixtures, name), fixtures, filepath.Join(fixtures, "masks"))
			if len(items) != len(want.Frames) {
				t.Fatalf("%d items, want %d", len(items), len(want.Frames))
			}
			base := strings.TrimSuffix(name, ".dcm")
			for i, it := range items {
				if it.Err != nil {
					t.Fatalf("frame %d: %v", i+1, it.Err)
				}
				m := it.Meta
				wantID := base
				if len(want.Frames) > 1 {
					wantID = fmt.Sprintf("%s-f%03d", base, i+1)
				}
				if m.Id != wantID || m.Source != "dicom" || m.Frame != int32(i+1) {
					t.Errorf("frame %d: id %q source %q frame %d, want %q dicom %d", i+1, m.Id, m.Source, m.Frame, wantID, i+1)
				}
				if int(m.Rows) != want.Rows || int(m.Cols) != want.Cols || it.HU.Rows != want.Rows || it.HU.Cols != want.Cols {
					t.Errorf("size %d×%d (HU %d×%d), want %d×%d", m.Rows, m.Cols, it.HU.Rows, it.HU.Cols, want.Rows, want.Cols)
				}
				if got := toInts(it.HU.Pix); !slices.Equal(got, want.Frames[i]) {
					t.Errorf("frame %d: HU differs: got %v..., want %v...", i+1, got[:8], want.Frames[i][:8])
				}
				if m.SpacingRowMm != want.Spacing[0] || m.SpacingColMm != want.Spacing[1] || m.SpacingAssumed != want.Assumed {
					t.Errorf("spacing %v×%v assumed %v, want %v assumed %v", m.SpacingRowMm, m.SpacingColMm, m.SpacingAssumed, want.Spacing, want.Assumed)
				}
				// HU clamped to int16 are read with a warning (issue 15).
				warned := strings.Join(m.Warnings, "; ")
				if want.Clamped > 0 && !strings.Contains(warned, fmt.Sprintf("%d of %d pixels outside the int16 HU range clamped to it", want.Clamped, want.Rows*want.Cols)) ||
					want.Clamped == 0 && warned != "" {
					t.Errorf("frame %d: warnings %q, want %d pixels clamped", i+1, warned, want.Clamped)
				}
				if m.SlicePosition != want.Positions[i] {
					t.Errorf("frame %d: position %v, want %v", i+1, m.SlicePosition, want.Positions[i])
				}
				if m.StudyUid != "1.2.826.0.1.3680043.10.1234.10" || m.SeriesUid != "1.2.826.0.1.3680043.10.1234.11" || m.InstanceUid == "" {
					t.Errorf("UIDs %q %q %q", m.StudyUid, m.SeriesUid, m.InstanceUid)
				}
			}
			switch name {
			case "ct_explicit_le.dcm":
				if items[0].Mask == nil || items[0].Mask.Count() != want.MaskPixels {
					t.Errorf("mask %v, want %d pixels", items[0].Mask, want.MaskPixels)
				}
			case "ct_multiframe.dcm":
				if items[0].Mask != nil || items[2].Mask != nil {
					t.Error("frames 1 and 3 have no mask file but got a mask")
				}
				if items[1].Mask == nil || items[1].Mask.Count() != want.MaskPixelsF002 {
					t.Errorf("frame 2 mask %v, want %d pixels", items[1].Mask, want.MaskPixelsF002)
				}
			default:
				for _, it := range items {
					if it.Mask != nil {
						t.Error("mask without a mask file")
					}
				}
			}
		})
	}
}

func TestReadRejects(t *testing.T) {
	for _, tc := range []struct {
		file string
		want error
		msg  string // substring of the error message
	}{
		{"truncated.dcm", ErrTruncated, "file has"},
		{"truncated_header.dcm", ErrTruncated, ""},
		{"huge_rows.dcm", ErrTooLarge, "60000×60000"},
		{"huge_length.dcm", ErrTruncated, "4294967280"},
		{"undefined_date.dcm", ErrNotDICOM, "undefined length"},
		{"nonimage.dcm", ErrNoPixelData, ""},
		{"non_ct.dcm", ErrNotCT, "MR"},
		{"deflate.dcm", ErrCompressed, "1.2.840.10008.1.2.1.99 (Deflated Explicit VR Little Endian)"},
		{"no_preamble.dcm", ErrNotDICOM, "preamble"},
		{"rgb.dcm", ErrPixelFormat, "3 samples"},
		{"short_pixels.dcm", ErrPixelFormat, "want 384"},
		{"ct_badmask.dcm", ErrMaskShape, "13×16"},
		// Issue 15: a rescale that leaves nothing in the int16 HU range, a
		// pixel size no CT has.
		{"hu_intercept_huge.dcm", ErrPixelFormat, "RescaleSlope 1 and RescaleIntercept 1e+09 map every stored value to 9.99967232e+08..1.000032767e+09 HU, outside the int16 range"},
		{"spacing_huge.dcm", ErrPixelFormat, `PixelSpacing 1e+308\1e+308 mm is outside 0.01..50 mm`},
		{"missing.dcm", fs.ErrNotExist, ""},
	} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join(fixtures, tc.file)
			items := readAll(t, path, fixtures, filepath.Join(fixtures, "masks"))
			if len(items) != 1 {
				t.Fatalf("%d items, want 1", len(items))
			}
			it := items[0]
			if it.Err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(it.Err, tc.want) {
				t.Errorf("error %v, want %v", it.Err, tc.want)
			}
			if !strings.Contains(it.Err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", it.Err, tc.msg)
			}
			if it.Meta == nil || it.Meta.Id != strings.TrimSuffix(tc.file, ".dcm") || it.Meta.Source != "dicom" {
				t.Errorf("meta %v", it.Meta)
			}
			if it.HU != nil || it.Mask != nil {
				t.Error("error item carries pixels")
			}
			wantPath := path
			if tc.want == ErrMaskShape {
				wantPath = MaskPath(filepath.Join(fixtures, "masks"), it.Meta.Id)
			}
			var fe *FormatError
			if tc.want != fs.ErrNotExist && (!errors.As(it.Err, &fe) || fe.Path != wantPath) {
				t.Errorf("error %v is not a *FormatError for %s", it.Err, wantPath)
			}
			t.Log(it.Err)
		})
	}
}

// TestForgedLengthsDoNotAllocate checks that declared lengths of 4 GiB and
// 60000×60000 images are refused before anything large is allocated.
func TestForgedLengthsDoNotAllocate(t *testing.T) {
	for _, name := range []string{"huge_length.dcm", "undefined_date.dcm", "huge_rows.dcm"} {
		b, err := os.ReadFile(filepath.Join(fixtures, name))
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err = Decode(name, b)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
			t.Errorf("%s: allocated %d bytes", name, d)
		}
	}
}

// pydicomHU decodes files with pydicom; it skips the test when pydicom is
// missing.
func pydicomHU(t *testing.T, paths ...string) map[string]expectedFile {
	t.Helper()
	testenv.RequirePython(t, "pydicom", "numpy")
	cmd := exec.Command(python, append([]string{filepath.Join(fixtures, "pydicom_hu.py")}, paths...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pydicom_hu.py: %v\n%s", err, stderr.String())
	}
	var m map[string]expectedFile
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFixturesAgreeWithPydicom(t *testing.T) {
	var paths []string
	for name, e := range loadExpected(t) {
		if !e.PydicomDiffers {
			paths = append(paths, filepath.Join(fixtures, name))
		}
	}
	slices.Sort(paths)
	ref := pydicomHU(t, paths...)
	for _, p := range paths {
		img, err := ReadFile(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		want := ref[p]
		if len(img.Frames) != len(want.Frames) {
			t.Fatalf("%s: %d frames, pydicom %d", p, len(img.Frames), len(want.Frames))
		}
		for i, fr := range img.Frames {
			if !slices.Equal(toInts(fr.HU.Pix), want.Frames[i]) {
				t.Errorf("%s frame %d: HU differs from pydicom", p, i+1)
			}
		}
	}
}

// TestPydicomTestFiles reads the real test files that Debian's pydicom
// ships (skipped when absent).
func TestPydicomTestFiles(t *testing.T) {
	testenv.RequireFile(t, filepath.Join(pydicomTF, "CT_small.dcm"), "pydicom's test files (Debian python3-pydicom)")
	for _, tc := range []struct {
		file string
		want error
		msg  string
	}{
		{"CT_small.dcm", nil, ""},
		{"MR_small.dcm", ErrNotCT, "MR"},
		{"MR_small_bigendian.dcm", ErrNotCT, "MR"},
		{"MR_small_implicit.dcm", ErrNotCT, "MR"},
		{"rtplan.dcm", ErrNoPixelData, ""},
		{"rtdose.dcm", ErrNotCT, "RTDOSE"},
		{"JPEG2000.dcm", ErrCompressed, "JPEG 2000"},
		{"693_J2KI.dcm", ErrCompressed, "1.2.840.10008.1.2.4.91"},
		{"J2K_pixelrep_mismatch.dcm", ErrCompressed, "JPEG 2000"},
		{"MR_small_RLE.dcm", ErrNotCT, "MR"}, // RLE is decoded (encap_test.go), MR is not CT
		{"JPEG-lossy.dcm", ErrCompressed, "JPEG"},
		{"image_dfl.dcm", ErrCompressed, "Deflated"},
		{"MR_truncated.dcm", ErrTruncated, ""},
		{"rtplan_truncated.dcm", ErrTruncated, ""},
		{"no_meta.dcm", ErrNotDICOM, ""},
		{"liver_1frame.dcm", ErrNotCT, "SEG"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			items := readAll(t, filepath.Join(pydicomTF, tc.file), "", "")
			if tc.want == nil {
				if len(items) != 1 || items[0].Err != nil {
					t.Fatalf("items %v", items)
				}
				return
			}
			if len(items) != 1 || !errors.Is(items[0].Err, tc.want) || !strings.Contains(items[0].Err.Error(), tc.msg) {
				t.Fatalf("got %d items, error %v; want %v mentioning %q", len(items), items[0].Err, tc.want, tc.msg)
			}
			t.Log(items[0].Err)
		})
	}
	t.Run("CT_small HU", func(t *testing.T) {
		p := filepath.Join(pydicomTF, "CT_small.dcm")
		img, err := ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		want := pydicomHU(t, p)[p]
		if img.Rows != 128 || img.Cols != 128 || !slices.Equal(toInts(img.Frames[0].HU.Pix), want.Frames[0]) {
			t.Error("CT_small HU differ from pydicom")
		}
		f := img.Frames[0]
		if f.SpacingAssumed || f.SpacingRowMm <= 0 || f.Position == 0 {
			t.Errorf("CT_small geometry %+v", f)
		}
		lo, hi := slices.Min(f.HU.Pix), slices.Max(f.HU.Pix)
		if lo < -1100 || hi > 3000 {
			t.Errorf("CT_small HU range [%d, %d]", lo, hi)
		}
	})
	// Every test file must give items or one error item, never a panic.
	all, _ := filepath.Glob(filepath.Join(pydicomTF, "*.dcm"))
	for _, p := range all {
		items := readAll(t, p, "", "")
		if len(items) == 0 {
			t.Errorf("%s: no item", p)
		}
		for _, it := range items {
			if (it.Err == nil) == (it.HU == nil) {
				t.Errorf("%s: item with err %v and HU %v", p, it.Err, it.HU != nil)
			}
		}
	}
}

func TestID(t *testing.T) {
	sep := string(filepath.Separator)
	for _, tc := range []struct{ path, root, want string }{
		{"a" + sep + "b" + sep + "x.dcm", "a", "b/x"},
		{"a" + sep + "b" + sep + "x.DCM", "a", "b/x"},
		{"a" + sep + "x.dicom", "", "x"},
		{"a" + sep + "1.2.840.113619.2.55", "a", "1.2.840.113619.2.55"},
		{"a" + sep + "IM0001", "elsewhere", "IM0001"},
	} {
		if got := ID(tc.path, tc.root); got != tc.want {
			t.Errorf("ID(%q, %q) = %q, want %q", tc.path, tc.root, got, tc.want)
		}
	}
	if got, want := MaskPath("m", "b/x-f002"), filepath.Join("m", "b", "x-f002.png"); got != want {
		t.Errorf("MaskPath = %q, want %q", got, want)
	}
}

func TestContextAndEmitError(t *testing.T) {
	path := filepath.Join(fixtures, "ct_multiframe.dcm")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Read(ctx, path, "", "", func(ingest.Item) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Read returned %v", err)
	}
	stop := errors.New("stop")
	n := 0
	err := Read(context.Background(), path, "", "", func(ingest.Item) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("Read returned %v after %d items, want the emit error after 1", err, n)
	}
	// Cancelling between frames stops the file.
	ctx, cancel = context.WithCancel(context.Background())
	n = 0
	err = Read(ctx, path, "", "", func(ingest.Item) error { n++; cancel(); return nil })
	if !errors.Is(err, context.Canceled) || n != 1 {
		t.Errorf("Read returned %v after %d items", err, n)
	}
}

// addFixtureSeeds seeds a fuzz target with every fixture file.
func addFixtureSeeds(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join(fixtures, "*.dcm"))
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzRead(f *testing.F) {
	addFixtureSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 64<<10 {
			return
		}
		img, err := Decode("fuzz", b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FormatError", err)
			}
			return
		}
		if len(img.Frames) == 0 {
			t.Fatal("no frames and no error")
		}
		for _, fr := range img.Frames {
			if imgx.CheckSize(fr.HU.Rows, fr.HU.Cols) != nil || len(fr.HU.Pix) != fr.HU.Rows*fr.HU.Cols {
				t.Fatalf("bad frame %d×%d with %d pixels", fr.HU.Rows, fr.HU.Cols, len(fr.HU.Pix))
			}
		}
	})
}

func BenchmarkRead(b *testing.B) {
	hu := imgx.NewHU(512, 512)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i%2000 - 1000)
	}
	path := filepath.Join(b.TempDir(), "s.dcm")
	s := dicomwrite.Series{StudyUID: dicomwrite.NewUID("bench", "study"), SeriesUID: dicomwrite.NewUID("bench", "series"), Intercept: -1024}
	if err := dicomwrite.WriteFile(path, s, dicomwrite.Instance{HU: hu, SpacingRowMm: 0.7, SpacingColMm: 0.7, InstanceNumber: 1}); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(int64(2 * len(hu.Pix)))
	for b.Loop() {
		if err := Read(ctx, path, "", "", func(it ingest.Item) error { return it.Err }); err != nil {
			b.Fatal(err)
		}
	}
}

// TestParserAllocatesDeclaredLengths documents why scan.go exists: given a
// 1 KiB file whose first element declares a 32 MiB OB value, the
// parser of suyashkumar/dicom allocates the 32 MiB before finding that the
// bytes are missing, while Decode refuses the file without allocating.
// If a new version of the parser stops doing so, this test says so.
func TestParserAllocatesDeclaredLengths(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(fixtures, "ct_explicit_le.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	metaEnd := 132 + 12 + int(binary.LittleEndian.Uint32(good[140:]))
	const declared = 32 << 20
	el := []byte{0x09, 0x00, 0x01, 0x10, 'O', 'B', 0, 0, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(el[8:], declared)
	b := slices.Concat(good[:metaEnd], el, good[metaEnd:])

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, perr := parse(b)
	runtime.ReadMemStats(&after)
	if perr == nil {
		t.Fatal("the parser accepted a value running past the end of the file")
	}
	if d := after.TotalAlloc - before.TotalAlloc; d < declared {
		t.Errorf("the parser allocated %d bytes for a declared %d: the pre-scan may no longer be needed", d, declared)
	}

	runtime.ReadMemStats(&before)
	_, err = Decode("declared", b)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("Decode: %v, want ErrTruncated", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Errorf("Decode allocated %d bytes", d)
	}
}
