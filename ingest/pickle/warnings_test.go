package pickle_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pickle"
)

func readItems(t *testing.T, name string) []ingest.Item {
	t.Helper()
	var items []ingest.Item
	if err := pickle.Read(context.Background(), filepath.Join("testdata", name), func(it ingest.Item) error {
		items = append(items, it)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return items
}

// TestItemWarnings checks what the reader accepts with a word in
// Meta.Warnings: label1 values that are not a str, and HU clamped to
// int16 (issue 15).
func TestItemWarnings(t *testing.T) {
	for _, tc := range []struct {
		file  string
		row   int
		label string
		warn  string // "" for none
	}{
		{"broken_labels.pkl", 0, "LR2", ""},
		{"broken_labels.pkl", 1, "3", "label1 is an int (3), not a str; used as text"},
		{"broken_labels.pkl", 2, "", "label1 is None: the slice has no label"},
		{"broken_labels.pkl", 3, "", "label1 is NaN (a missing value): the slice has no label"},
		{"broken_labels.pkl", 4, "2.5", "label1 is a float (2.5), not a str; used as text"},
		{"broken_hu_range.pkl", 0, "LR2", ""},
		{"broken_hu_range.pkl", 1, "LR3", "hu_array_old: 2 of 256 HU values outside the int16 range clamped to it (the first is 1e+12 at pixel 52 (row 3, col 4))"},
	} {
		items := readItems(t, tc.file)
		it := items[tc.row]
		if it.Err != nil {
			t.Errorf("%s row %d: %v", tc.file, tc.row, it.Err)
			continue
		}
		got := strings.Join(it.Meta.Warnings, "; ")
		if got != tc.warn || it.Meta.Label != tc.label {
			t.Errorf("%s row %d: label %q, warnings %q; want %q, %q", tc.file, tc.row, it.Meta.Label, got, tc.label, tc.warn)
		}
		if tc.file == "broken_hu_range.pkl" && tc.row == 1 {
			if it.HU.Pix[3*16+4] != 32767 || it.HU.Pix[5*16+6] != -32768 {
				t.Errorf("clamped HU %d, %d", it.HU.Pix[3*16+4], it.HU.Pix[5*16+6])
			}
		}
	}
}

// TestStrArrayData reads array data pickled as a str, which numpy takes
// as latin1 bytes: p4_str_data.pkl's row 1 matches pandas (the fixture
// test checks the digest); a character above U+00FF is a row error that
// says so, where the reader used to say "256 data bytes, the shape needs
// 256".
func TestStrArrayData(t *testing.T) {
	items := readItems(t, "p4_str_data.pkl")
	if items[1].Err != nil || items[1].Mask == nil {
		t.Fatalf("row 1: %v", items[1].Err)
	}
	items = readItems(t, "broken_str_data.pkl")
	err := items[1].Err
	if err == nil || !strings.Contains(err.Error(), "decoding row 1 (id 1): mask: pickle: bad array cell: array data is a str with a character above U+00FF") {
		t.Fatalf("row 1: error %v", err)
	}
	if items[0].Err != nil || items[2].Err != nil {
		t.Fatalf("rows 0 and 2: %v, %v", items[0].Err, items[2].Err)
	}
}
