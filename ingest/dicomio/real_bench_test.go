package dicomio

import (
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
// (element walk, pixel data located), the header parse (without the
// top-level private and pixel data elements, as Decode does; parse-all
// with them, the
// baseline), and the pixels (decompression, HU) from the parsed dataset;
// "all" is Decode.
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
		b.Run(name+"/scan", func(b *testing.B) {
			for b.Loop() {
				if _, err := scanFile(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		sr, _ := scanFile(buf)
		b.Run(name+"/parse-all", func(b *testing.B) {
			for b.Loop() {
				if _, err := parse(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/parse", func(b *testing.B) {
			for b.Loop() {
				if _, err := parseWithout(buf, sr.unparsed); err != nil {
					b.Fatal(err)
				}
			}
		})
		ds, _ := parse(buf)
		b.Run(name+"/pixels", func(b *testing.B) {
			for b.Loop() {
				if _, err := fromDataset(ds, sr, buf); err != nil {
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

// TestPrivateElementsLeftOut: Decode, which gives the parser a file
// without its top-level private and pixel data elements, returns the same Image as the
// parse of the whole file, on every fixture and on the real files (where
// ../shared is present), and the real scanner files do have private
// elements to leave out.
func TestPrivateElementsLeftOut(t *testing.T) {
	paths, _ := filepath.Glob(filepath.Join(fixtures, "*.dcm"))
	var real []string
	if _, err := os.Stat(filepath.Join("..", "..", "..", "shared", "data", "ct_series")); err == nil {
		for _, p := range realFiles(t) {
			real = append(real, p)
		}
	}
	for _, p := range append(paths, real...) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sr, err := scanFile(b)
		if err != nil {
			continue // the fixtures of broken files
		}
		all, err := parse(b)
		if err != nil {
			continue
		}
		want, werr := fromDataset(all, sr, b)
		got, gerr := Decode(p, b)
		if (werr == nil) != (gerr == nil) || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: without private elements %+v (%v), with them %+v (%v)", p, got, gerr, want, werr)
		}
	}
	for _, p := range real {
		if filepath.Base(p) == "0.dcm" {
			continue // lungmask_1, written by pydicom: no private elements
		}
		b, _ := os.ReadFile(p)
		if sr, err := scanFile(b); err != nil || len(sr.unparsed) == 0 {
			t.Errorf("%s: no private ranges found (%v)", p, err)
		}
	}
}
