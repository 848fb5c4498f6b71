package dicomio

import (
	"bytes"
	"context"
	"math"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
)

// rampHU covers air, lung, soft tissue, bone and the int16 extremes that a
// given intercept allows.
func rampHU(rows, cols int, lo, hi int) *imgx.HU {
	h := &imgx.HU{Rows: rows, Cols: cols, Pix: make([]int16, rows*cols)}
	for i := range h.Pix {
		h.Pix[i] = int16(lo + (i*97)%(hi-lo+1))
	}
	h.Pix[0], h.Pix[len(h.Pix)-1] = int16(lo), int16(hi)
	return h
}

func TestWriteRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name      string
		intercept int
		lo, hi    int
	}{
		{"intercept0", 0, math.MinInt16, math.MaxInt16},
		{"intercept-1024", -1024, math.MinInt16, math.MaxInt16 - 1024},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hu := rampHU(37, 29, tc.lo, tc.hi)
			s := dicomwrite.Series{StudyUID: dicomwrite.NewUID("t", "study"), SeriesUID: dicomwrite.NewUID("t", tc.name), Intercept: tc.intercept, SliceThicknessMm: 1.25, SeriesNumber: 3}
			in := dicomwrite.Instance{HU: hu, SpacingRowMm: 0.703125, SpacingColMm: 0.6, PositionMm: [3]float64{-180, -170.5, -42.25}, InstanceNumber: 12}
			path := filepath.Join(dir, "series", tc.name+".dcm")
			if err := dicomwrite.WriteFile(path, s, in); err != nil {
				t.Fatal(err)
			}
			var items []ingest.Item
			if err := Read(context.Background(), path, dir, "", func(it ingest.Item) error { items = append(items, it); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(items) != 1 || items[0].Err != nil {
				t.Fatalf("items %v", items)
			}
			it := items[0]
			if !slices.Equal(it.HU.Pix, hu.Pix) || it.HU.Rows != 37 || it.HU.Cols != 29 {
				t.Error("HU differ after the round trip")
			}
			m := it.Meta
			if m.Id != "series/"+tc.name || m.StudyUid != s.StudyUID || m.SeriesUid != s.SeriesUID ||
				m.InstanceUid != dicomwrite.NewUID(s.SeriesUID, "instance", "12") {
				t.Errorf("meta ids %v", m)
			}
			if m.SpacingRowMm != 0.703125 || m.SpacingColMm != 0.6 || m.SpacingAssumed || m.SlicePosition != -42.25 {
				t.Errorf("meta geometry %v", m)
			}
			ref := pydicomHU(t, path)[path]
			if ref.Rows != 37 || ref.Cols != 29 || !slices.Equal(ref.Frames[0], toInts(hu.Pix)) {
				t.Error("pydicom reads other HU values")
			}
			if ref.Modality != "CT" {
				t.Errorf("pydicom reads modality %q", ref.Modality)
			}
		})
	}
}

func TestWriteErrors(t *testing.T) {
	good := dicomwrite.Series{StudyUID: "1.2.3", SeriesUID: "1.2.4"}
	hu := rampHU(4, 4, -1000, 1000)
	for _, tc := range []struct {
		name string
		s    dicomwrite.Series
		in   dicomwrite.Instance
	}{
		{"no pixels", good, dicomwrite.Instance{SpacingRowMm: 1, SpacingColMm: 1}},
		{"no UIDs", dicomwrite.Series{}, dicomwrite.Instance{HU: hu, SpacingRowMm: 1, SpacingColMm: 1}},
		{"no spacing", good, dicomwrite.Instance{HU: hu}},
		{"NaN spacing", good, dicomwrite.Instance{HU: hu, SpacingRowMm: math.NaN(), SpacingColMm: 1}},
		{"overflow", dicomwrite.Series{StudyUID: "1", SeriesUID: "2", Intercept: -1024}, dicomwrite.Instance{HU: &imgx.HU{Rows: 1, Cols: 1, Pix: []int16{32000}}, SpacingRowMm: 1, SpacingColMm: 1}},
		{"shape", good, dicomwrite.Instance{HU: &imgx.HU{Rows: 2, Cols: 2, Pix: []int16{1}}, SpacingRowMm: 1, SpacingColMm: 1}},
		{"too large", good, dicomwrite.Instance{HU: &imgx.HU{Rows: 5000, Cols: 1}, SpacingRowMm: 1, SpacingColMm: 1}},
	} {
		if err := dicomwrite.Write(&bytes.Buffer{}, tc.s, tc.in); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}

func TestWriteDeterministic(t *testing.T) {
	s := dicomwrite.Series{StudyUID: dicomwrite.NewUID("d", "1"), SeriesUID: dicomwrite.NewUID("d", "2")}
	in := dicomwrite.Instance{HU: rampHU(8, 8, -1000, 500), SpacingRowMm: 0.7, SpacingColMm: 0.7, InstanceNumber: 1}
	var a, b bytes.Buffer
	if err := dicomwrite.Write(&a, s, in); err != nil {
		t.Fatal(err)
	}
	if err := dicomwrite.Write(&b, s, in); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two writes of the same slice differ")
	}
}

func TestNewUID(t *testing.T) {
	valid := regexp.MustCompile(`^2\.25\.(0|[1-9][0-9]*)$`)
	seen := map[string]bool{}
	for i := range 1000 {
		u := dicomwrite.NewUID("series", strconv.Itoa(i))
		if len(u) > 64 || !valid.MatchString(u) {
			t.Fatalf("bad UID %q", u)
		}
		if seen[u] {
			t.Fatalf("UID %q repeated", u)
		}
		seen[u] = true
	}
	if dicomwrite.NewUID("a", "b") != dicomwrite.NewUID("a", "b") || dicomwrite.NewUID("a", "b") == dicomwrite.NewUID("ab") {
		t.Error("NewUID is not a function of its parts")
	}
}
