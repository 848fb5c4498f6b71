package phantom

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/ingest/pickle"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
)

// MasksDir is the folder, inside the folder WriteDICOM writes, that holds
// the ground-truth masks.
const MasksDir = "masks"

// checkNames fails when two slices would get the same file name.
func checkNames(slices []Slice) error {
	seen := make(map[string]bool, len(slices))
	for i := range slices {
		n := slices[i].Name()
		if seen[n] {
			return fmt.Errorf("phantom: two slices named %s", n)
		}
		seen[n] = true
	}
	return nil
}

// WriteDICOM writes the slices as one CT series: dir/<name>.dcm (see
// Slice.Name) and the masks as 8-bit PNGs dir/masks/<name>.png, which is
// where dicomio.Read finds them when called with root dir and masksDir
// dir/masks. Every slice gets a mask file, empty when it has no nodule.
// Stored values are HU+1024 (RescaleIntercept -1024).
func WriteDICOM(dir string, slices []Slice) error {
	if err := checkNames(slices); err != nil {
		return err
	}
	for i := range slices {
		s := &slices[i]
		series := dicomwrite.Series{
			StudyUID:         s.StudyUID,
			SeriesUID:        s.SeriesUID,
			PatientName:      "PHANTOM^SYNTHETIC",
			PatientID:        fmt.Sprintf("PHANTOM-%d", s.Seed),
			Description:      fmt.Sprintf("lungseg phantom, seed %d", s.Seed),
			SeriesNumber:     1,
			Intercept:        -1024,
			SliceThicknessMm: 1.25,
		}
		in := dicomwrite.Instance{
			HU:           s.HU,
			SpacingRowMm: s.SpacingMm,
			SpacingColMm: s.SpacingMm,
			PositionMm: [3]float64{
				-float64(s.HU.Cols) * s.SpacingMm / 2,
				-float64(s.HU.Rows) * s.SpacingMm / 2,
				s.PositionMm,
			},
			InstanceNumber: s.Index + 1,
			UID:            s.InstanceUID,
		}
		if err := dicomwrite.WriteFile(filepath.Join(dir, s.Name()+".dcm"), series, in); err != nil {
			return fmt.Errorf("phantom: writing %s: %w", s.Name(), err)
		}
		if err := pngpair.WriteMask(dicomio.MaskPath(filepath.Join(dir, MasksDir), s.Name()), s.Mask); err != nil {
			return fmt.Errorf("phantom: writing the mask of %s: %w", s.Name(), err)
		}
	}
	return nil
}

// WritePNG writes the slices as PNG pairs dir/<name>_image.png and
// dir/<name>_mask.png (the mask even when empty).
func WritePNG(dir string, slices []Slice) error {
	if err := checkNames(slices); err != nil {
		return err
	}
	for i := range slices {
		s := &slices[i]
		if err := pngpair.Write(dir, s.Name(), s.HU, s.Mask); err != nil {
			return fmt.Errorf("phantom: writing %s: %w", s.Name(), err)
		}
	}
	return nil
}

// PickleRow returns the slice as a row of the Mendeley-style DataFrame:
// label1 = Label, mask, hu_array_old = HU and hu_array = HU inside the
// lungs and 0 elsewhere. Slices without a nodule have an empty label.
func (s *Slice) PickleRow() pickle.Row {
	hu := make([]float64, len(s.HU.Pix))
	lung := make([]float64, len(s.HU.Pix))
	for i, v := range s.HU.Pix {
		hu[i] = float64(v)
		if s.Lung.Pix[i] != 0 {
			lung[i] = float64(v)
		}
	}
	return pickle.Row{ID: s.Name(), Label: s.Label, Rows: s.HU.Rows, Cols: s.HU.Cols, Mask: s.Mask, HU: hu, HULung: lung}
}

// WritePKL writes the slices to path as a pandas pickle laid out like the
// Mendeley dataset (pickle.WriteFunc), one row per slice in order. Rows
// are converted one at a time, so memory does not grow with len(slices).
func WritePKL(path string, slices []Slice) (err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("phantom: creating folder: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("phantom: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("phantom: closing %s: %w", path, cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	err = pickle.WriteFunc(f, len(slices), func(i int) (*pickle.Row, error) {
		r := slices[i].PickleRow()
		return &r, nil
	})
	if err != nil {
		return fmt.Errorf("phantom: writing pickle %s: %w", path, err)
	}
	return nil
}
