package dicomio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/lungseg/lungseg/pkg/testenv"
)

// compressedFixtures maps each compressed fixture (make_compressed.sh) to
// the file whose HU it must reproduce, and its transfer syntax.
var compressedFixtures = []struct{ file, source, ts string }{
	{"rle_ct_explicit_le.dcm", "ct_explicit_le.dcm", SyntaxRLELossless},
	{"rle_multiframe.dcm", "ct_multiframe.dcm", SyntaxRLELossless},
	{"rle_multiframe_nobot.dcm", "ct_multiframe.dcm", SyntaxRLELossless},
	{"rle_8bit.dcm", "ct_8bit.dcm", SyntaxRLELossless},
	{"rle_12bit_signed.dcm", "ct_12bit_signed.dcm", SyntaxRLELossless},
	{"jpll_sv1_ct_explicit_le.dcm", "ct_explicit_le.dcm", SyntaxJPEGLosslessSV1},
	{"jpll_sv1_multiframe.dcm", "ct_multiframe.dcm", SyntaxJPEGLosslessSV1},
	{"jpll_sv1_multiframe_nobot.dcm", "ct_multiframe.dcm", SyntaxJPEGLosslessSV1},
	{"jpll_sv1_8bit.dcm", "ct_8bit.dcm", SyntaxJPEGLosslessSV1},
	{"jpll_sv1_unsigned.dcm", "ct_implicit_unsigned.dcm", SyntaxJPEGLosslessSV1},
	{"jpll_sv1_12bit_junk.dcm", "ct_12bit_junk.dcm", SyntaxJPEGLosslessSV1},
	{"jpll_sv2_12bit_signed.dcm", "ct_12bit_signed.dcm", SyntaxJPEGLossless},
	{"jpll_sv3_12bit_signed.dcm", "ct_12bit_signed.dcm", SyntaxJPEGLossless},
	{"jpll_sv4_12bit_signed.dcm", "ct_12bit_signed.dcm", SyntaxJPEGLossless},
	{"jpll_sv5_12bit_signed.dcm", "ct_12bit_signed.dcm", SyntaxJPEGLossless},
	{"jpll_sv6_12bit_signed.dcm", "ct_12bit_signed.dcm", SyntaxJPEGLossless},
	{"jpll_sv7_12bit_signed.dcm", "ct_12bit_signed.dcm", SyntaxJPEGLossless},
	{"jpll_sv6_multiframe.dcm", "ct_multiframe.dcm", SyntaxJPEGLossless},
	// Point transform 2: compared with dcmdjpeg's decompression.
	{"jpll_pt2_ct_explicit_le.dcm", "jpll_pt2_ct_explicit_le_dcmdjpeg.dcm", SyntaxJPEGLossless},
	// Made by pydicom (make_fixtures.py), all -1000 HU.
	{"rle.dcm", "", SyntaxRLELossless},
}

func TestCompressedFixtures(t *testing.T) {
	for _, tc := range compressedFixtures {
		t.Run(tc.file, func(t *testing.T) {
			got, err := ReadFile(filepath.Join(fixtures, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if got.TransferSyntax != tc.ts {
				t.Errorf("transfer syntax %s, want %s", got.TransferSyntax, tc.ts)
			}
			if tc.source == "" {
				for _, v := range got.Frames[0].HU.Pix {
					if v != -1000 {
						t.Fatalf("HU %d, want -1000 everywhere", v)
					}
				}
				return
			}
			want, err := ReadFile(filepath.Join(fixtures, tc.source))
			if err != nil {
				t.Fatal(err)
			}
			if got.Rows != want.Rows || got.Cols != want.Cols || len(got.Frames) != len(want.Frames) || got.MultiFrame != want.MultiFrame {
				t.Fatalf("%d×%d, %d frames (multi %v), want %d×%d, %d frames (multi %v)",
					got.Rows, got.Cols, len(got.Frames), got.MultiFrame, want.Rows, want.Cols, len(want.Frames), want.MultiFrame)
			}
			for i := range want.Frames {
				g, w := got.Frames[i], want.Frames[i]
				if !slices.Equal(g.HU.Pix, w.HU.Pix) {
					t.Errorf("frame %d: HU %v..., want %v...", i+1, g.HU.Pix[:8], w.HU.Pix[:8])
				}
				if g.Position != w.Position || g.SpacingRowMm != w.SpacingRowMm || g.SpacingColMm != w.SpacingColMm || g.SpacingAssumed != w.SpacingAssumed {
					t.Errorf("frame %d: geometry %+v, want %+v", i+1, g, w)
				}
			}
		})
	}
}

// TestPointTransformDropsLowBits checks that the point-transform fixture
// really differs from its lossless source (so that comparing it with
// dcmdjpeg tests the transform).
func TestPointTransformDropsLowBits(t *testing.T) {
	pt, err := ReadFile(filepath.Join(fixtures, "jpll_pt2_ct_explicit_le.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := ReadFile(filepath.Join(fixtures, "ct_explicit_le.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	differ := 0
	for i, v := range pt.Frames[0].HU.Pix {
		w := src.Frames[0].HU.Pix[i]
		if v != w {
			differ++
		}
		// Stored = HU + 1000 here (slope 1, intercept -1000 in
		// make_fixtures.py); point transform 2 clears its two low bits.
		if d := int(w) - int(v); d < 0 || d > 3 {
			t.Fatalf("pixel %d: %d with point transform, %d without", i, v, w)
		}
	}
	if differ == 0 {
		t.Error("point transform 2 left every pixel unchanged")
	}
}

func TestCompressedRejects(t *testing.T) {
	for _, tc := range []struct {
		file string
		want error
		msg  string
	}{
		{"jpegls.dcm", ErrCompressed, "1.2.840.10008.1.2.4.80 (JPEG-LS Lossless Image Compression)"},
		{"deflate.dcm", ErrCompressed, "Deflated"},
	} {
		_, err := ReadFile(filepath.Join(fixtures, tc.file))
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.file, err, tc.want, tc.msg)
		}
	}
}

// withPixelItems returns file b with the items of its top-level
// encapsulated pixel data replaced by items.
func withPixelItems(t *testing.T, b []byte, items []byte) []byte {
	t.Helper()
	_, start, err := scan(b)
	if err != nil || start < 0 {
		t.Fatalf("scan: %v, pixel items at %d", err, start)
	}
	return slices.Concat(b[:start], items)
}

func item(data []byte) []byte {
	out := []byte{0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(out[4:], uint32(len(data)))
	return append(out, data...)
}

var seqDelim = []byte{0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0}

func u32s(v ...uint32) []byte {
	out := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(out[4*i:], x)
	}
	return out
}

// TestFragmentedFrames re-encapsulates the frames of the 3-frame JPEG
// fixture: split over several fragments, with and without an offset
// table, and with broken tables.
func TestFragmentedFrames(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(fixtures, "jpll_sv1_multiframe_nobot.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := ReadFile(filepath.Join(fixtures, "ct_multiframe.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	_, start, _ := scan(b)
	_, frags, err := encapsulatedValue(b, start)
	if err != nil || len(frags) != 3 {
		t.Fatalf("%d fragments, %v", len(frags), err)
	}
	// Each frame in three fragments (even lengths but the last).
	var split [][]byte
	for _, f := range frags {
		d := f.data
		a, c := len(d)/3&^1, 2*len(d)/3&^1
		split = append(split, d[:a], d[a:c], d[c:])
	}
	var offs []uint32
	var body []byte
	for i, s := range split {
		if i%3 == 0 {
			offs = append(offs, uint32(len(body)))
		}
		body = append(body, item(s)...)
	}
	oneFrag := slices.Concat(item(frags[0].data), item(frags[1].data), item(frags[2].data))
	for _, tc := range []struct {
		name  string
		items []byte
		err   string // "" for success
	}{
		{"offset table", slices.Concat(item(u32s(offs...)), body, seqDelim), ""},
		{"no offset table, SOI markers", slices.Concat(item(nil), body, seqDelim), ""},
		{"one fragment per frame", slices.Concat(item(nil), oneFrag, seqDelim), ""},
		{"table of 2 entries", slices.Concat(item(u32s(offs[:2]...)), body, seqDelim), "2 entries for 3 frames"},
		{"table not at fragment", slices.Concat(item(u32s(0, offs[1]+2, offs[2])), body, seqDelim), "not the start of a fragment"},
		{"table not from 0", slices.Concat(item(u32s(8, offs[1], offs[2])), body, seqDelim), "must start at 0"},
		{"table decreasing", slices.Concat(item(u32s(0, offs[2], offs[1])), body, seqDelim), "must start at 0 and increase"},
		{"table odd length", slices.Concat(item([]byte{0, 0, 0, 0, 0}), body, seqDelim), "not a multiple of 4"},
		{"two fragments", slices.Concat(item(nil), item(frags[0].data), item(frags[1].data), seqDelim), "2 fragments for 3 frames"},
		{"no fragments", slices.Concat(item(nil), seqDelim), "no fragments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := Decode(tc.name, withPixelItems(t, b, tc.items))
			if tc.err != "" {
				if !errors.Is(err, ErrCorruptPixels) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want ErrCorruptPixels mentioning %q", err, tc.err)
				}
				var fe *FormatError
				if !errors.As(err, &fe) || fe.Path != tc.name {
					t.Errorf("%v is not a *FormatError naming the file", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i := range want.Frames {
				if !slices.Equal(img.Frames[i].HU.Pix, want.Frames[i].HU.Pix) {
					t.Errorf("frame %d differs", i+1)
				}
			}
		})
	}
}

// TestRLEWithoutOffsetTable checks that RLE frames are not grouped by
// guesswork: more fragments than frames need an offset table.
func TestRLEWithoutOffsetTable(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(fixtures, "rle_multiframe_nobot.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	_, start, _ := scan(b)
	_, frags, _ := encapsulatedValue(b, start)
	d := frags[0].data
	items := slices.Concat(item(nil), item(d[:64]), item(d[64:]), item(frags[1].data), item(frags[2].data), seqDelim)
	if _, err := Decode("x", withPixelItems(t, b, items)); !errors.Is(err, ErrCorruptPixels) || !strings.Contains(err.Error(), "4 fragments for 3 frames and no offset table") {
		t.Errorf("error %v", err)
	}
}

// TestCorruptFrames damages the compressed frame of each fixture: every
// truncation and a sweep of byte changes must give an error or an image,
// never a panic, and truncations of the entropy data must be errors.
func TestCorruptFrames(t *testing.T) {
	for _, tc := range compressedFixtures {
		b, err := os.ReadFile(filepath.Join(fixtures, tc.file))
		if err != nil {
			t.Fatal(err)
		}
		_, start, _ := scan(b)
		bot, frags, err := encapsulatedValue(b, start)
		if err != nil {
			t.Fatal(err)
		}
		f := frags[0].data
		for n := 0; n < len(f)-4; n++ {
			items := [][]byte{item(bot), item(f[:n])}
			for _, g := range frags[1:] {
				items = append(items, item(g.data))
			}
			items = append(items, seqDelim)
			bad := withPixelItems(t, b, slices.Concat(items...))
			if _, err := Decode(tc.file, bad); err == nil {
				t.Errorf("%s truncated to %d of %d bytes: no error", tc.file, n, len(f))
			}
		}
		for i := range f {
			g := slices.Clone(f)
			g[i] ^= 0x5A
			items := [][]byte{item(bot), item(g)}
			for _, h := range frags[1:] {
				items = append(items, item(h.data))
			}
			items = append(items, seqDelim)
			img, err := Decode(tc.file, withPixelItems(t, b, slices.Concat(items...)))
			if err == nil && (len(img.Frames) == 0 || len(img.Frames[0].HU.Pix) != img.Rows*img.Cols) {
				t.Fatalf("%s with byte %d changed: bad image", tc.file, i)
			}
			var fe *FormatError
			if err != nil && !errors.As(err, &fe) {
				t.Fatalf("%s with byte %d changed: %v is not a *FormatError", tc.file, i, err)
			}
		}
	}
}

// TestNativeLengthInCompressedSyntax: pixel data of defined length in
// an encapsulated syntax is refused.
func TestNativeLengthInCompressedSyntax(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(fixtures, "ct_explicit_le.dcm"))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("1.2.840.10008.1.2.1\x00"))
	if i < 0 {
		t.Fatal("no transfer syntax")
	}
	// Same length: "1.2.840.10008.1.2.5" plus a NUL pad.
	b = slices.Concat(b[:i], []byte("1.2.840.10008.1.2.5\x00"), b[i+20:])
	if _, err := Decode("x", b); !errors.Is(err, ErrPixelFormat) || !strings.Contains(err.Error(), "not encapsulated") {
		t.Errorf("error %v", err)
	}
}

// TestDecodedSizeLimit: a multi-frame declaration beyond MaxDecodedBytes
// is refused before decoding.
func TestDecodedSizeLimit(t *testing.T) {
	pf := pixelFormat{rows: 4096, cols: 4096, frames: 64, bitsAllocated: 16}
	if _, err := encapsulatedFrames(nil, 0, SyntaxRLELossless, pf); !errors.Is(err, ErrTooLarge) {
		t.Errorf("error %v, want ErrTooLarge", err)
	}
}

// fileFrames returns the compressed frames of a file in an encapsulated
// syntax and the attributes a decoder needs.
type fileLayout struct {
	ts                                        string
	rows, cols, samples, bits, frames, planar int
}

func intOf(t testing.TB, es dsElements, tg tag.Tag, def int) int {
	t.Helper()
	v, ok, err := es.integer(tg)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return def
	}
	return v
}

func layoutOf(t testing.TB, b []byte) (fileLayout, dsElements) {
	t.Helper()
	ts, _, err := scan(b)
	if err != nil && !errors.Is(err, ErrCompressed) {
		t.Fatal(err)
	}
	ds, err := parse(b)
	if err != nil {
		t.Fatal(err)
	}
	top := dsElements(ds.Elements)
	return fileLayout{ts: ts, rows: intOf(t, top, tag.Rows, 0), cols: intOf(t, top, tag.Columns, 0),
		samples: intOf(t, top, tag.SamplesPerPixel, 1), bits: intOf(t, top, tag.BitsAllocated, 0),
		frames: intOf(t, top, tag.NumberOfFrames, 1), planar: intOf(t, top, tag.PlanarConfiguration, 0)}, top
}

func compressedFramesOf(t *testing.T, path string) ([][]byte, fileLayout) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	l, _ := layoutOf(t, b)
	_, start, err := scan(b)
	if err != nil {
		t.Fatal(err)
	}
	bot, frags, err := encapsulatedValue(b, start)
	if err != nil {
		t.Fatal(err)
	}
	frames, err := splitFrames(bot, frags, l.frames, l.ts != SyntaxRLELossless)
	if err != nil {
		t.Fatal(err)
	}
	return frames, l
}

// nativePixels returns the pixel data of an uncompressed file as little
// endian, pixel-interleaved samples.
func nativePixels(t *testing.T, path string) ([]byte, fileLayout) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	l, _ := layoutOf(t, b)
	// The library's own copy of the value (Decode takes it from the scan).
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipProcessingPixelDataValue())
	if err != nil {
		t.Fatal(err)
	}
	info := dsElements(ds.Elements).find(tag.PixelData).Value.GetValue().(dicom.PixelDataInfo)
	raw := slices.Clone(info.UnprocessedValueData)
	raw = raw[:l.rows*l.cols*l.samples*l.frames*l.bits/8]
	if nativeSyntaxes[l.ts].bo == binary.BigEndian && l.bits > 8 {
		w := l.bits / 8
		for i := 0; i < len(raw); i += w {
			slices.Reverse(raw[i : i+w])
		}
	}
	if l.planar == 1 && l.samples > 1 {
		w, n := l.bits/8, l.rows*l.cols
		out := make([]byte, len(raw))
		for f := range l.frames {
			for s := range l.samples {
				for p := range n {
					copy(out[((f*n+p)*l.samples+s)*w:][:w], raw[((f*l.samples+s)*n+p)*w:][:w])
				}
			}
		}
		raw = out
	}
	return raw, l
}

// TestAgainstDcmtk decodes real compressed files (Debian's pydicom test
// files, the GDCM example, the fixtures) at the decoder level, whatever
// their modality, and compares them with dcmtk's decompression.
func TestAgainstDcmtk(t *testing.T) {
	var paths []string
	for _, p := range []string{
		"MR_small_RLE.dcm", "rtdose_rle.dcm", "rtdose_rle_1frame.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm",
		"SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_32bit_2frame.dcm",
	} {
		if _, err := os.Stat(filepath.Join(pydicomTF, p)); err == nil {
			paths = append(paths, filepath.Join(pydicomTF, p))
		}
	}
	if p := "/usr/share/doc/libgdcm3.0/examples/00191113.dcm"; fileExists(p) {
		paths = append(paths, p) // XA, JPEG lossless SV1, 8 bits, 4 frames
	}
	for _, tc := range compressedFixtures {
		paths = append(paths, filepath.Join(fixtures, tc.file))
	}
	tools := map[string]string{}
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			frames, l := compressedFramesOf(t, p)
			tool := "dcmdjpeg"
			if l.ts == SyntaxRLELossless {
				tool = "dcmdrle"
			}
			if tools[tool] == "" {
				tools[tool] = testenv.RequireCommand(t, tool)
			}
			out := filepath.Join(t.TempDir(), "native.dcm")
			if msg, err := exec.Command(tools[tool], "+te", p, out).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", tool, err, msg)
			}
			want, wl := nativePixels(t, out)
			if wl.rows != l.rows || wl.cols != l.cols || wl.frames != len(frames) || wl.bits != l.bits {
				t.Fatalf("dcmtk layout %+v, file %+v", wl, l)
			}
			n := l.rows * l.cols * l.samples * l.bits / 8
			for i, f := range frames {
				var got []byte
				var err error
				if l.ts == SyntaxRLELossless {
					got, err = DecodeRLE(f, l.rows, l.cols, l.samples, l.bits)
				} else {
					got, err = DecodeJPEGLossless(f, l.rows, l.cols, l.bits)
				}
				if err != nil {
					t.Fatalf("frame %d: %v", i+1, err)
				}
				if !bytes.Equal(got, want[i*n:(i+1)*n]) {
					t.Errorf("frame %d differs from %s", i+1, tool)
				}
			}
			t.Logf("%s: %d frame(s) of %d×%d×%d at %d bits agree with %s", l.ts, len(frames), l.rows, l.cols, l.samples, l.bits, tool)
		})
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestMRSmallRLE compares pydicom's RLE file with its uncompressed
// original, without any external tool.
func TestMRSmallRLE(t *testing.T) {
	rle, orig := filepath.Join(pydicomTF, "MR_small_RLE.dcm"), filepath.Join(pydicomTF, "MR_small.dcm")
	testenv.RequireFile(t, rle, "pydicom's test files (Debian python3-pydicom)")
	testenv.RequireFile(t, orig, "pydicom's test files (Debian python3-pydicom)")
	frames, l := compressedFramesOf(t, rle)
	got, err := DecodeRLE(frames[0], l.rows, l.cols, 1, l.bits)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := nativePixels(t, orig)
	if !bytes.Equal(got, want) {
		t.Error("MR_small_RLE decodes differently from MR_small")
	}
}

// TestUnsupportedJPEG: JPEG files Read must still refuse, with the
// reason.
func TestUnsupportedJPEG(t *testing.T) {
	for _, tc := range []struct {
		file string
		want error
		msg  string
	}{
		{"MR_small_jpeg_ls_lossless.dcm", ErrCompressed, "JPEG-LS"},
		{"JPEG2000.dcm", ErrCompressed, "JPEG 2000"},
		{"JPGExtended.dcm", ErrCompressed, "1.2.840.10008.1.2.4.51"},
		{"SC_rgb_jpeg_dcmtk.dcm", ErrCompressed, "JPEG Baseline"},
	} {
		p := filepath.Join(pydicomTF, tc.file)
		testenv.RequireFile(t, p, "pydicom's test files (Debian python3-pydicom)")
		_, err := ReadFile(p)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.file, err, tc.want, tc.msg)
		}
	}
	// At the decoder level, three components are refused by the codec.
	p := filepath.Join(pydicomTF, "SC_rgb_jpeg_gdcm.dcm")
	frames, l := compressedFramesOf(t, p)
	if _, err := DecodeJPEGLossless(frames[0], l.rows, l.cols, 8); !errors.Is(err, ErrPixelFormat) || !strings.Contains(err.Error(), "3 components") {
		t.Errorf("RGB JPEG lossless: %v", err)
	}
}

// TestForgedSizeDoesNotAllocate declares 4096×4096 in small compressed
// files: they are refused before the frame buffer is allocated.
func TestForgedSizeDoesNotAllocate(t *testing.T) {
	for _, name := range []string{"rle_ct_explicit_le.dcm", "jpll_sv1_ct_explicit_le.dcm"} {
		b, err := os.ReadFile(filepath.Join(fixtures, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range [][]byte{{0x28, 0, 0x10, 0, 'U', 'S', 2, 0}, {0x28, 0, 0x11, 0, 'U', 'S', 2, 0}} {
			i := bytes.Index(b, tg)
			if i < 0 {
				t.Fatalf("%s: no %x", name, tg)
			}
			binary.LittleEndian.PutUint16(b[i+8:], 4096)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err = Decode(name, b)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrCorruptPixels) || !strings.Contains(err.Error(), "cannot hold") {
			t.Errorf("%s: error %v", name, err)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
			t.Errorf("%s: allocated %d bytes", name, d)
		}
	}
}
