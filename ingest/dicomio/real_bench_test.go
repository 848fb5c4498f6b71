package dicomio

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/lungseg/lungseg/pkg/testenv"
)

// realFiles returns the real CT files the decode benchmarks read where they
// lie (never copied): the first slice of each series in ../shared/data/ct_series
// and pydicom's CT_small, by name; absent ones are left out.
func realFiles(b testing.TB) map[string]string {
	b.Helper()
	ct := filepath.Join(testenv.SharedData(b), "ct_series")
	out := map[string]string{}
	for name, p := range map[string]string{
		"popi-rle":        filepath.Join(ct, "popi_00_141", "00-slice000.dcm"),
		"lungdx-rle":      filepath.Join(ct, "lungdx_a0002_30", "1-01.dcm"),
		"lungmask-native": filepath.Join(ct, "lungmask_1", "0.dcm"),
		"ct_small-native": "/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm",
	} {
		if _, err := os.Stat(p); err == nil {
			out[name] = p
		}
	}
	return out
}

// BenchmarkReadReal splits decoding a real file into its steps: the scan
// (element walk, dataset kept, pixel data located) and the rest
// (attributes read from the scan, decompression, HU); "all" is Decode,
// "decoder" Decode on one Decoder reused across the loop (what the ingest
// stage does across a series: no plane allocated after the first).
// The parser path Decode took before (parser_test.go) runs beside as the
// baseline: "parse-all" parses the whole file, "parse" the file without
// its top-level private and PixelData elements, and "parser-all" is the
// former Decode (scan, parse, attributes from the parser's Dataset).
func BenchmarkReadReal(b *testing.B) {
	for name, p := range realFiles(b) {
		buf, err := os.ReadFile(p)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name+"/all", func(b *testing.B) {
			for b.Loop() {
				if _, err := Decode(p, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/decoder", func(b *testing.B) {
			var d Decoder
			for b.Loop() {
				if _, err := d.Decode(p, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/scan", func(b *testing.B) {
			for b.Loop() {
				if _, err := scanFile(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		sr, _ := scanFile(buf)
		b.Run(name+"/pixels", func(b *testing.B) {
			for b.Loop() {
				if _, err := fromDataset(nil, &sr, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		unparsed := unparsedRanges(buf, &sr)
		b.Run(name+"/parser-all", func(b *testing.B) {
			for b.Loop() {
				sr, err := scanFile(buf)
				if err != nil {
					b.Fatal(err)
				}
				ds, err := parseWithout(buf, unparsedRanges(buf, &sr))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := parsedImage(ds, sr, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/parse-all", func(b *testing.B) {
			for b.Loop() {
				if _, err := parse(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/parse", func(b *testing.B) {
			for b.Loop() {
				if _, err := parseWithout(buf, unparsed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeUnsigned12 converts a 512×512 frame of 12-bit unsigned
// samples (the layout of the ct_series RLE series) with intercept -1024:
// the scalar loop (decodeLE16, the baseline in the same run) against the
// masked saturating add decodeFrame now takes.
func BenchmarkDecodeUnsigned12(b *testing.B) {
	const n = 512 * 512
	raw := make([]byte, 2*n)
	for i := range n {
		raw[2*i], raw[2*i+1] = byte(i*7), byte(i>>3)&0x0f
	}
	dst := make([]int16, n)
	b.Run("decodeLE16", func(b *testing.B) {
		b.SetBytes(2 * n)
		for b.Loop() {
			decodeLE16(dst, raw, 11, 12, false, -1024)
		}
	})
	b.Run("maskAddSatS16", func(b *testing.B) {
		b.SetBytes(2 * n)
		for b.Loop() {
			maskAddSatS16(dst, raw, 12, -1024)
		}
	})
}

// TestDecodeMatchesParser: Decode, which reads the attributes from the
// scan, returns the same Image as the parser path it replaced
// (parser_test.go: dicom.Parse of the whole file and accessors on its
// Dataset), or fails where it failed with the same sentinel, on every
// fixture, pydicom's test files and the real files (where ../shared is
// present).
func TestDecodeMatchesParser(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(fixtures, "*.dcm"))
	pyd, _ := filepath.Glob(filepath.Join(pydicomTF, "*.dcm"))
	paths = append(paths, pyd...)
	for _, p := range realFiles(t) {
		paths = append(paths, p)
	}
	compared := 0
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		got, gerr := Decode(p, b)
		want, werr := decodeByParser(p, b)
		switch {
		case gerr != nil && werr != nil:
			if s := sentinelOf(werr); !errors.Is(gerr, s) {
				t.Errorf("%s: error %v, the parser path %v", p, gerr, werr)
			}
		case gerr != nil || werr != nil:
			t.Errorf("%s: error %v, the parser path %v", p, gerr, werr)
		case !reflect.DeepEqual(got, want):
			t.Errorf("%s: Image %+v, the parser path %+v", p, got, want)
		default:
			compared++
		}
	}
	t.Logf("%d of %d files decoded alike by both", compared, len(paths))
	if compared < 20 {
		t.Errorf("only %d files decoded by both", compared)
	}
}

// decodeByParser is Decode as it was with the parser: scan, then the
// parser's Dataset of the whole file.
func decodeByParser(name string, b []byte) (*Image, error) {
	sr, err := scanFile(b)
	if err != nil {
		return nil, err
	}
	ds, err := parse(b)
	if err != nil {
		return nil, err
	}
	img, err := parsedImage(ds, sr, b)
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) && fe.Path == "" {
			fe.Path = name
		}
	}
	return img, err
}

func sentinelOf(err error) error {
	for _, s := range []error{ErrNotDICOM, ErrTruncated, ErrCompressed, ErrNoPixelData, ErrNotCT, ErrTooLarge, ErrPixelFormat, ErrCorruptPixels} {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}
