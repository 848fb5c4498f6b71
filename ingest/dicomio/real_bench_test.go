package dicomio

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/lungseg/lungseg/pkg/testenv"
)

// realFiles returns the real CT files the decode benchmarks read where they
// lie (never copied): the first slice of each series in ../shared/data/ct_series
// and pydicom's CT_small, by name; absent ones are left out.
func realFiles(b *testing.B) map[string]string {
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
// (element walk, pixel data located), the header parse, and the pixels
// (decompression, HU) from the parsed dataset; "all" is Decode.
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
		b.Run(name+"/parse", func(b *testing.B) {
			for b.Loop() {
				if _, err := parse(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		sr, _ := scanFile(buf)
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
