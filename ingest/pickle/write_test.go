package pickle_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/lungseg/lungseg/ingest/pickle"
	"github.com/lungseg/lungseg/pkg/imgx"

	"github.com/lungseg/lungseg/pkg/testenv"
)

// phantomRow makes a deterministic row of the given size: a noisy body in
// HU with a disc-shaped nodule mask; lung selects whether HULung is set.
func phantomRow(seed uint64, rows, cols int, lung bool) pickle.Row {
	r := rand.New(rand.NewPCG(seed, 7))
	row := pickle.Row{
		Label: []string{"LR2", "LR3", "LR4A", "LR4B"}[seed%4],
		Rows:  rows, Cols: cols,
		Mask: imgx.NewMask(rows, cols),
		HU:   make([]float64, rows*cols),
	}
	cy, cx, rad := float64(rows)*r.Float64(), float64(cols)*r.Float64(), 1+float64(min(rows, cols))/6*r.Float64()
	for y := range rows {
		for x := range cols {
			k := y*cols + x
			row.HU[k] = -1000 + 1100*r.Float64() + r.NormFloat64()
			if math.Hypot(float64(y)-cy, float64(x)-cx) <= rad {
				row.Mask.Pix[k] = 1
			}
		}
	}
	if lung {
		row.HULung = make([]float64, len(row.HU))
		for k, v := range row.HU {
			if r.IntN(3) > 0 {
				row.HULung[k] = v
			}
		}
	}
	return row
}

func writeRows(t testing.TB, rows []pickle.Row) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "go.pkl")
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := pickle.Write(fh, rows); err != nil {
		t.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func testRows() []pickle.Row {
	rows := []pickle.Row{
		phantomRow(1, 5, 7, true),
		phantomRow(2, 16, 16, false),
		phantomRow(3, 512, 512, true), // payloads outside frames
		phantomRow(4, 1, 1, true),
		phantomRow(5, 40, 3, true),
	}
	// Values that must survive bit for bit.
	rows[0].HU[0], rows[0].HU[1], rows[0].HU[2] = math.Copysign(0, -1), math.NaN(), math.Inf(-1)
	rows[0].HU[3], rows[0].HU[4] = math.MaxFloat64, math.SmallestNonzeroFloat64
	rows[0].Mask.Pix[5] = 7 // written as 1
	return rows
}

// TestWriteRoundTrip writes rows with Write and reads them back with Row.
func TestWriteRoundTrip(t *testing.T) {
	rows := testRows()
	for _, n := range []int{0, 1, len(rows)} {
		path := writeRows(t, rows[:n])
		f, err := pickle.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if f.Len() != n || f.Protocol() != 4 {
			t.Fatalf("%d rows protocol %d, want %d rows protocol 4", f.Len(), f.Protocol(), n)
		}
		for i := range n {
			got, err := f.Row(i)
			if err != nil {
				t.Fatal(err)
			}
			want := rows[i]
			if got.ID != strconv.Itoa(i) || got.Label != want.Label || got.Rows != want.Rows || got.Cols != want.Cols {
				t.Errorf("row %d: %q %q %d×%d", i, got.ID, got.Label, got.Rows, got.Cols)
			}
			lung := want.HULung
			if lung == nil {
				lung = want.HU
			}
			if shaFloats(got.HU) != shaFloats(want.HU) || shaFloats(got.HULung) != shaFloats(lung) {
				t.Errorf("row %d: HU arrays differ", i)
			}
			for k, v := range want.Mask.Pix {
				if (v != 0) != (got.Mask.Pix[k] == 1) || got.Mask.Pix[k] > 1 {
					t.Fatalf("row %d: mask pixel %d is %d, wrote %d", i, k, got.Mask.Pix[k], v)
				}
			}
		}
		f.Close()
	}
}

// TestWriteReadByPandas has pandas read a Go-written pickle and compares
// its arrays, dtypes, columns and index with the rows written.
func TestWriteReadByPandas(t *testing.T) {
	py := testenv.RequirePython(t, "pandas", "numpy")
	rows := testRows()
	path := writeRows(t, rows)
	out, err := exec.Command(py, "testdata/pandas_digest.py", path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("pandas could not read the Go pickle: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var d digest
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if d.NRows != len(rows) || len(d.Rows) != len(rows) {
		t.Fatalf("pandas reads %d rows, wrote %d", d.NRows, len(rows))
	}
	if want := []string{"label1", "mask", "hu_array_old", "hu_array"}; len(d.Columns) != 4 || d.Columns[0] != want[0] || d.Columns[1] != want[1] || d.Columns[2] != want[2] || d.Columns[3] != want[3] {
		t.Errorf("pandas columns %v", d.Columns)
	}
	for i, w := range d.Rows {
		r := rows[i]
		if w.ID != strconv.Itoa(i) || w.Label != r.Label {
			t.Errorf("row %d: pandas id %q label %q", i, w.ID, w.Label)
		}
		if w.MaskDtype != "|i1" || w.HUDtype != "<f8" || w.HULungDtype != "<f8" {
			t.Errorf("row %d: pandas dtypes %s %s %s", i, w.MaskDtype, w.HUDtype, w.HULungDtype)
		}
		for _, s := range [][]int{w.MaskShape, w.HUShape, w.HULungShape} {
			if len(s) != 2 || s[0] != r.Rows || s[1] != r.Cols {
				t.Errorf("row %d: pandas shape %v, wrote %d×%d", i, s, r.Rows, r.Cols)
			}
		}
		mask := make([]byte, len(r.Mask.Pix))
		for k, v := range r.Mask.Pix {
			if v != 0 {
				mask[k] = 1
			}
		}
		lung := r.HULung
		if lung == nil {
			lung = r.HU
		}
		if w.MaskSHA != shaBytes(mask) || w.HUSHA != shaFloats(r.HU) || w.HULungSHA != shaFloats(lung) {
			t.Errorf("row %d: pandas reads other arrays than written", i)
		}
	}
}

// TestWriteRejectsBadRows checks Write's row validation.
func TestWriteRejectsBadRows(t *testing.T) {
	ok := phantomRow(1, 4, 4, true)
	tests := map[string]func(r *pickle.Row){
		"no mask":         func(r *pickle.Row) { r.Mask = nil },
		"mask size":       func(r *pickle.Row) { r.Mask = imgx.NewMask(4, 5) },
		"short HU":        func(r *pickle.Row) { r.HU = r.HU[:15] },
		"short lung":      func(r *pickle.Row) { r.HULung = r.HULung[:3] },
		"zero size":       func(r *pickle.Row) { r.Rows = 0 },
		"over MaxSide":    func(r *pickle.Row) { r.Rows, r.Cols = imgx.MaxSide+1, 1 },
		"rows×cols wrong": func(r *pickle.Row) { r.Rows, r.Cols = 2, 8 },
	}
	for name, mutate := range tests {
		r := ok
		r.Mask = &imgx.Mask{Rows: 4, Cols: 4, Pix: append([]uint8(nil), ok.Mask.Pix...)}
		mutate(&r)
		if err := pickle.Write(&bytes.Buffer{}, []pickle.Row{ok, r}); !errors.Is(err, pickle.ErrRow) {
			t.Errorf("%s: got %v, want ErrRow", name, err)
		}
	}
	if err := pickle.Write(&bytes.Buffer{}, []pickle.Row{ok}); err != nil {
		t.Fatalf("good row refused: %v", err)
	}
}
