package dicomio_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/testenv"
)

// ctFrame returns a 512×512 synthetic CT slice (internal/phantom, with its
// default 20 HU noise) as stored values HU+1024.
func ctFrame(b *testing.B) (*phantom.Slice, []uint16, []byte) {
	b.Helper()
	s := phantom.Generate(7, 1, phantom.Options{})[0]
	v := make([]uint16, len(s.HU.Pix))
	raw := make([]byte, 2*len(v))
	for i, h := range s.HU.Pix {
		v[i] = uint16(max(int(h)+1024, 0))
		binary.LittleEndian.PutUint16(raw[2*i:], v[i])
	}
	return &s, v, raw
}

// BenchmarkDecodeRLE decodes one 512×512 16-bit CT frame encoded by the
// test PackBits encoder.
func BenchmarkDecodeRLE(b *testing.B) {
	_, _, raw := ctFrame(b)
	enc := dicomio.EncodeRLEForTest(raw, 512, 512, 1, 2)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := dicomio.DecodeRLE(enc, 512, 512, 1, 16); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(raw))/float64(len(enc)), "ratio")
}

// BenchmarkDecodeJPEGLossless decodes one 512×512 16-bit CT frame encoded
// by the test encoder (optimised Huffman table) with predictors 1 and 6.
func BenchmarkDecodeJPEGLossless(b *testing.B) {
	_, v, raw := ctFrame(b)
	for _, pred := range []int{1, 6} {
		b.Run("sv"+string(rune('0'+pred)), func(b *testing.B) {
			enc := dicomio.EncodeJPEGLosslessForTest(v, 512, 512, 16, pred)
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := dicomio.DecodeJPEGLossless(enc, 512, 512, 16); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(raw))/float64(len(enc)), "ratio")
		})
	}
}

// BenchmarkReadCompressed reads a whole 512×512 CT file (parse, decode,
// HU) uncompressed and as compressed by dcmtk (skipped without it).
func BenchmarkReadCompressed(b *testing.B) {
	s, _, _ := ctFrame(b)
	dir := b.TempDir()
	native := filepath.Join(dir, "native.dcm")
	ser := dicomwrite.Series{StudyUID: s.StudyUID, SeriesUID: s.SeriesUID, Intercept: -1024}
	if err := dicomwrite.WriteFile(native, ser, dicomwrite.Instance{HU: s.HU, SpacingRowMm: 0.7, SpacingColMm: 0.7, InstanceNumber: 1}); err != nil {
		b.Fatal(err)
	}
	files := []struct{ name, tool, opt string }{
		{"native", "", ""}, {"rle", "dcmcrle", ""}, {"jpeg-sv1", "dcmcjpeg", "+e1"}, {"jpeg-sv6", "dcmcjpeg", "+el"},
	}
	for _, f := range files {
		b.Run(f.name, func(b *testing.B) {
			path := native
			if f.tool != "" {
				if _, err := exec.LookPath(f.tool); err != nil {
					b.Skip(f.tool, " not installed")
				}
				path = filepath.Join(dir, f.name+".dcm")
				args := []string{native, path}
				if f.opt != "" {
					args = append([]string{f.opt}, args...)
				}
				if out, err := exec.Command(f.tool, args...).CombinedOutput(); err != nil {
					b.Fatalf("%s: %v\n%s", f.tool, err, out)
				}
			}
			b.SetBytes(512 * 512 * 2)
			ctx := context.Background()
			for b.Loop() {
				if err := dicomio.Read(ctx, path, "", "", func(it ingest.Item) error { return it.Err }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPhantomCompressedByDcmtk writes a 512×512 synthetic CT slice,
// compresses it with dcmtk (RLE, JPEG lossless SV1, SV6 and SV7, split in
// 1 KiB fragments with and without an offset table) and checks that Read
// gives back the exact HU.
func TestPhantomCompressedByDcmtk(t *testing.T) {
	s := phantom.Generate(11, 1, phantom.Options{})[0]
	dir := t.TempDir()
	native := filepath.Join(dir, "native.dcm")
	ser := dicomwrite.Series{StudyUID: s.StudyUID, SeriesUID: s.SeriesUID, Intercept: -1024}
	if err := dicomwrite.WriteFile(native, ser, dicomwrite.Instance{HU: s.HU, SpacingRowMm: 0.7, SpacingColMm: 0.7, InstanceNumber: 1}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		ts   string
	}{
		{"rle", []string{"dcmcrle"}, dicomio.SyntaxRLELossless},
		{"jpeg-sv1", []string{"dcmcjpeg", "+e1"}, dicomio.SyntaxJPEGLosslessSV1},
		{"jpeg-sv6", []string{"dcmcjpeg", "+el"}, dicomio.SyntaxJPEGLossless},
		{"jpeg-sv1-fragments", []string{"dcmcjpeg", "+e1", "+fs", "1"}, dicomio.SyntaxJPEGLosslessSV1},
		{"jpeg-sv7-fragments-no-table", []string{"dcmcjpeg", "+el", "+sv", "7", "+fs", "1", "-ot"}, dicomio.SyntaxJPEGLossless},
		{"rle-fragments", []string{"dcmcrle", "+fs", "1"}, dicomio.SyntaxRLELossless},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tool := testenv.RequireCommand(t, tc.args[0])
			out := filepath.Join(dir, tc.name+".dcm")
			if msg, err := exec.Command(tool, append(tc.args[1:], native, out)...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", tc.args, err, msg)
			}
			if strings.Contains(tc.name, "fragments") {
				b, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if n := bytes.Count(b, []byte{0xFE, 0xFF, 0x00, 0xE0}); n < 10 {
					t.Fatalf("only %d items: the frame is not fragmented", n)
				}
			}
			img, err := dicomio.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if img.TransferSyntax != tc.ts {
				t.Errorf("transfer syntax %s, want %s", img.TransferSyntax, tc.ts)
			}
			if !slices.Equal(img.Frames[0].HU.Pix, s.HU.Pix) {
				t.Error("HU differ from the slice written")
			}
		})
	}
}
