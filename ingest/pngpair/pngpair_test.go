package pngpair

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/pkg/imgx"

	"github.com/lungseg/lungseg/pkg/testenv"
)

// testHU returns a rows×cols slice with a ramp that covers negative,
// zero and positive HU.
func testHU(rows, cols int) *imgx.HU {
	h := &imgx.HU{Rows: rows, Cols: cols, Pix: make([]int16, rows*cols)}
	for i := range h.Pix {
		h.Pix[i] = int16(-1024 + (i*37)%3000)
	}
	return h
}

func testMask(rows, cols int) *imgx.Mask {
	m := imgx.NewMask(rows, cols)
	for r := rows / 4; r < rows/2; r++ {
		for c := cols / 3; c < cols/2; c++ {
			m.Pix[r*cols+c] = 1
		}
	}
	return m
}

func collect(t *testing.T, path, root string) []ingest.Item {
	t.Helper()
	var items []ingest.Item
	if err := Read(context.Background(), path, root, func(it ingest.Item) error {
		items = append(items, it)
		return nil
	}); err != nil {
		t.Fatalf("Read(%s): %v", path, err)
	}
	if len(items) != 1 {
		t.Fatalf("Read(%s) emitted %d items, want 1", path, len(items))
	}
	return items
}

func writePNG(t *testing.T, path string, img image.Image) {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// hugePNG returns a PNG signature and an IHDR declaring w×h 16-bit gray,
// with no image data.
func hugePNG(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8] = 16 // bit depth
	ihdr[9] = 0  // grayscale
	chunk := append([]byte("IHDR"), ihdr...)
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], 13)
	b.Write(n[:])
	b.Write(chunk)
	binary.BigEndian.PutUint32(n[:], crc32.ChecksumIEEE(chunk))
	b.Write(n[:])
	return b.Bytes()
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	hu := testHU(23, 17)
	mask := testMask(23, 17)
	if err := Write(dir, "LIDC-0001/n01_k00", hu, mask); err != nil {
		t.Fatal(err)
	}
	it := collect(t, filepath.Join(dir, "LIDC-0001", "n01_k00_image.png"), dir)[0]
	if it.Err != nil {
		t.Fatal(it.Err)
	}
	if got, want := it.Meta.Id, "LIDC-0001/n01_k00"; got != want {
		t.Errorf("Id = %q, want %q", got, want)
	}
	if it.Meta.Source != "png" || !it.Meta.SpacingAssumed || it.Meta.SpacingRowMm != DefaultSpacingMm || it.Meta.SpacingColMm != DefaultSpacingMm {
		t.Errorf("meta = %v", it.Meta)
	}
	if it.Meta.Rows != 23 || it.Meta.Cols != 17 {
		t.Errorf("meta size %d×%d, want 23×17", it.Meta.Rows, it.Meta.Cols)
	}
	if it.HU.Rows != 23 || it.HU.Cols != 17 || !slices.Equal(it.HU.Pix, hu.Pix) {
		t.Error("HU differs after the round trip")
	}
	if it.Mask == nil || !slices.Equal(it.Mask.Pix, mask.Pix) {
		t.Error("mask differs after the round trip")
	}
}

func TestID(t *testing.T) {
	sep := string(filepath.Separator)
	for _, tc := range []struct{ path, root, want string }{
		{"a" + sep + "b" + sep + "x_image.png", "a", "b/x"},
		{"a" + sep + "x_image.png", "", "x"},
		{"a" + sep + "x_image.png", "other", "x"},
		{"x_image.png", ".", "x"},
	} {
		if got := ID(tc.path, tc.root); got != tc.want {
			t.Errorf("ID(%q, %q) = %q, want %q", tc.path, tc.root, got, tc.want)
		}
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	// 8-bit image.
	g := image.NewGray(image.Rect(0, 0, 4, 4))
	writePNG(t, filepath.Join(dir, "gray8_image.png"), g)
	// RGB image.
	writePNG(t, filepath.Join(dir, "rgb_image.png"), image.NewRGBA(image.Rect(0, 0, 4, 4)))
	// Mask of the wrong size.
	if err := Write(dir, "shape", testHU(8, 8), nil); err != nil {
		t.Fatal(err)
	}
	if err := WriteMask(filepath.Join(dir, "shape_mask.png"), testMask(8, 9)); err != nil {
		t.Fatal(err)
	}
	// Header declaring 100000×100000.
	if err := os.WriteFile(filepath.Join(dir, "huge_image.png"), hugePNG(100000, 100000), 0o644); err != nil {
		t.Fatal(err)
	}
	// A good image with a huge mask.
	if err := Write(dir, "hugemask", testHU(8, 8), nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hugemask_mask.png"), hugePNG(8, 70000), 0o644); err != nil {
		t.Fatal(err)
	}
	// Truncated image.
	b, err := EncodeHU(testHU(32, 32))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "trunc_image.png"), b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notpng_image.png"), []byte("hello, not a png"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x.png"), b, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, file string
		want       error
	}{
		{"8-bit image", "gray8_image.png", ErrBitDepth},
		{"colour image", "rgb_image.png", ErrBitDepth},
		{"mask shape", "shape_image.png", ErrMaskShape},
		{"huge header", "huge_image.png", ErrTooLarge},
		{"huge mask header", "hugemask_image.png", ErrTooLarge},
		{"truncated", "trunc_image.png", nil},
		{"not a PNG", "notpng_image.png", nil},
		{"wrong name", "x.png", ErrName},
		{"missing", "missing_image.png", fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			it := collect(t, filepath.Join(dir, tc.file), dir)[0]
			if it.Err == nil {
				t.Fatal("no error")
			}
			if it.Meta == nil || it.Meta.Id == "" {
				t.Error("error item without Meta.Id")
			}
			if tc.want != nil && !errors.Is(it.Err, tc.want) {
				t.Errorf("error %v, want %v", it.Err, tc.want)
			}
			if it.HU != nil || it.Mask != nil {
				t.Error("error item carries pixels")
			}
			t.Log(it.Err)
		})
	}
}

// TestHugeHeaderNoAlloc checks that a forged 65535×65535 header is refused
// before the decoder allocates the image (8 GiB at 16 bits).
func TestHugeHeaderNoAlloc(t *testing.T) {
	b := hugePNG(65535, 65535)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := DecodeHU("huge", b)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("error %v, want ErrTooLarge", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Errorf("allocated %d bytes decoding a forged header", d)
	}
}

func TestMissingMask(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, "s", testHU(5, 6), nil); err != nil {
		t.Fatal(err)
	}
	it := collect(t, filepath.Join(dir, "s_image.png"), "")[0]
	if it.Err != nil || it.HU == nil {
		t.Fatalf("item %+v", it)
	}
	if it.Mask != nil {
		t.Error("mask should be nil when the mask file is missing")
	}
}

func TestMaskColourModels(t *testing.T) {
	dir := t.TempDir()
	want := testMask(6, 7)
	for name, img := range map[string]image.Image{
		"gray16": func() image.Image {
			g := image.NewGray16(image.Rect(0, 0, 7, 6))
			for i, v := range want.Pix {
				g.SetGray16(i%7, i/7, color.Gray16{Y: uint16(v) * 1})
			}
			return g
		}(),
		"paletted": func() image.Image {
			p := image.NewPaletted(image.Rect(0, 0, 7, 6), color.Palette{color.Black, color.White})
			for i, v := range want.Pix {
				p.SetColorIndex(i%7, i/7, v)
			}
			return p
		}(),
	} {
		path := filepath.Join(dir, name+".png")
		writePNG(t, path, img)
		m, err := ReadMask(path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !slices.Equal(m.Pix, want.Pix) {
			t.Errorf("%s: mask differs", name)
		}
	}
}

func TestClamp(t *testing.T) {
	hu := &imgx.HU{Rows: 1, Cols: 4, Pix: []int16{-3000, -1024, 0, 32767}}
	b, err := EncodeHU(hu)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeHU("clamp", b)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int16{-1024, -1024, 0, 32767}; !slices.Equal(got.Pix, want) {
		t.Errorf("got %v, want %v", got.Pix, want)
	}
}

// TestClampWarns reads a PNG whose values go up to 65535 (64511 HU): the
// pixels above 32767 HU are clamped and counted in Meta.Warnings (issue
// 15).
func TestClampWarns(t *testing.T) {
	dir := t.TempDir()
	g := image.NewGray16(image.Rect(0, 0, 4, 2))
	for i, v := range []uint16{0, 1024, 33791, 33792, 65535, 2000, 65535, 5} {
		g.SetGray16(i%4, i/4, color.Gray16{Y: v})
	}
	writePNG(t, filepath.Join(dir, "s_image.png"), g)
	var items []ingest.Item
	if err := Read(context.Background(), filepath.Join(dir, "s_image.png"), dir, func(it ingest.Item) error {
		items = append(items, it)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	it := items[0]
	if it.Err != nil {
		t.Fatal(it.Err)
	}
	want := "3 of 8 pixels above 32767 HU clamped to it (the first, at pixel 3 (row 0, col 3), is 32768 HU)"
	if w := strings.Join(it.Meta.Warnings, "; "); w != want {
		t.Errorf("warnings %q, want %q", w, want)
	}
	if it.HU.Pix[2] != 32767 || it.HU.Pix[4] != 32767 {
		t.Errorf("HU %v", it.HU.Pix)
	}
}

func TestContextAndEmitError(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, "s", testHU(4, 4), nil); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s_image.png")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Read(ctx, path, dir, func(ingest.Item) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Read returned %v", err)
	}
	stop := errors.New("stop")
	if err := Read(context.Background(), path, dir, func(ingest.Item) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Read returned %v, want the emit error", err)
	}
}

// TestRealLIDC reads a few real LIDC-IDRI pairs from the shared data
// folder (skipped when absent) and checks that the HU values are those of
// lung CT and the masks are binary.
func TestRealLIDC(t *testing.T) {
	root := filepath.Join(testenv.SharedData(t), "lidc", "ctslicing_vois_hu")
	images, _ := filepath.Glob(filepath.Join(root, "LIDC-IDRI-0001", "*_image.png"))
	if len(images) == 0 {
		t.Fatalf("no LIDC-IDRI-0001 images under %s", root)
	}
	if len(images) > 6 {
		images = images[:6]
	}
	nodulePixels := 0
	for _, path := range images {
		it := collect(t, path, root)[0]
		if it.Err != nil {
			t.Fatalf("%s: %v", path, it.Err)
		}
		if it.Meta.Id != "LIDC-IDRI-0001/"+filepath.Base(path[:len(path)-len(ImageSuffix)]) {
			t.Errorf("Id %q for %s", it.Meta.Id, path)
		}
		lo, hi := slices.Min(it.HU.Pix), slices.Max(it.HU.Pix)
		if lo < -1100 || hi > 4000 || hi-lo < 300 {
			t.Errorf("%s: HU range [%d, %d] is not that of a CT slice", path, lo, hi)
		}
		if it.Mask == nil {
			t.Fatalf("%s: no mask", path)
		}
		for _, v := range it.Mask.Pix {
			if v > 1 {
				t.Fatalf("%s: mask value %d", path, v)
			}
		}
		nodulePixels += it.Mask.Count()
	}
	if nodulePixels == 0 {
		t.Error("no nodule pixels in any of the masks read")
	}
}

func FuzzDecode(f *testing.F) {
	b, err := EncodeHU(testHU(5, 3))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	mb, err := EncodeMask(testMask(4, 4))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(mb)
	f.Add(hugePNG(100000, 100000))
	f.Add(hugePNG(3, 3))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<16 {
			return
		}
		if hu, err := DecodeHU("fuzz", b); err == nil {
			if imgx.CheckSize(hu.Rows, hu.Cols) != nil || len(hu.Pix) != hu.Rows*hu.Cols {
				t.Fatalf("bad HU %d×%d with %d pixels", hu.Rows, hu.Cols, len(hu.Pix))
			}
		}
		if m, err := DecodeMask("fuzz", b); err == nil {
			if imgx.CheckSize(m.Rows, m.Cols) != nil || len(m.Pix) != m.Rows*m.Cols {
				t.Fatalf("bad mask %d×%d with %d pixels", m.Rows, m.Cols, len(m.Pix))
			}
			for _, v := range m.Pix {
				if v > 1 {
					t.Fatalf("mask value %d", v)
				}
			}
		}
	})
}

func BenchmarkRead(b *testing.B) {
	dir := b.TempDir()
	if err := Write(dir, "s", testHU(512, 512), testMask(512, 512)); err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "s_image.png")
	ctx := context.Background()
	for b.Loop() {
		if err := Read(ctx, path, dir, func(it ingest.Item) error { return it.Err }); err != nil {
			b.Fatal(err)
		}
	}
}
