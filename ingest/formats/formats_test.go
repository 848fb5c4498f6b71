package formats_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"unsafe"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/formats"
)

func dicomFormat(t *testing.T) ingest.Format {
	t.Helper()
	for _, f := range formats.All() {
		if f.Name == "dicom" {
			return f
		}
	}
	t.Fatal("no dicom format")
	return ingest.Format{}
}

// readTwo reads two DICOM fixtures of one size with read and returns the
// pixels of their items as fn saw them (copied) and as they are after.
func readTwo(t *testing.T, read ingest.ReadFunc) (during, after [][]int16) {
	t.Helper()
	dir := filepath.Join("..", "dicomio", "testdata")
	for _, f := range []string{"ct_explicit_le.dcm", "ct_12bit_signed.dcm"} {
		err := read(context.Background(), filepath.Join(dir, f), ingest.Options{Root: dir}, func(it ingest.Item) error {
			if it.Err != nil {
				return it.Err
			}
			during = append(during, slices.Clone(it.HU.Pix))
			after = append(after, it.HU.Pix)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return during, after
}

// TestDICOMReusing: the dicom format's reusing reader (the ingest
// stage's) decodes a second file into the first one's pixel memory, and
// its Read does not, so that what the stage saves and what Walk's callers
// keep are both as documented.
func TestDICOMReusing(t *testing.T) {
	f := dicomFormat(t)
	if f.Reusing == nil {
		t.Fatal("the dicom format has no reusing reader")
	}
	during, after := readTwo(t, f.Reusing())
	if unsafe.SliceData(after[0]) != unsafe.SliceData(after[1]) || !slices.Equal(after[0], during[1]) {
		t.Error("the reusing reader did not decode the second file into the first one's plane")
	}
	if slices.Equal(during[0], during[1]) {
		t.Fatal("the two fixtures have the same pixels")
	}
	during, after = readTwo(t, f.Read)
	if unsafe.SliceData(after[0]) == unsafe.SliceData(after[1]) || !slices.Equal(after[0], during[0]) {
		t.Error("Read shared pixel memory between files")
	}
}
