package pickle_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pickle"
)

// digest mirrors testdata/pandas_digest.py: what pandas reads from a file.
type digest struct {
	Columns  []string    `json:"columns"`
	NRows    int         `json:"nrows"`
	Protocol int         `json:"protocol"`
	Rows     []digestRow `json:"rows"`
}

type digestRow struct {
	ID          string `json:"id"`
	Label       string `json:"label"`
	MaskShape   []int  `json:"mask_shape"`
	MaskSHA     string `json:"mask_sha256"`
	MaskDtype   string `json:"mask_dtype"`
	HUShape     []int  `json:"hu_shape"`
	HUSHA       string `json:"hu_sha256"`
	HUDtype     string `json:"hu_dtype"`
	HULungShape []int  `json:"hulung_shape"`
	HULungSHA   string `json:"hulung_sha256"`
	HULungDtype string `json:"hulung_dtype"`
}

func loadExpected(t *testing.T) map[string]digest {
	t.Helper()
	b, err := os.ReadFile("testdata/expected.json")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	out := map[string]digest{}
	for name, v := range raw {
		if strings.HasPrefix(name, "_") {
			continue
		}
		var d digest
		if err := json.Unmarshal(v, &d); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = d
	}
	if len(out) < 10 {
		t.Fatalf("expected.json lists %d files", len(out))
	}
	return out
}

func shaFloats(v []float64) string {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(x))
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func shaBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// rowErrs lists the rows of the fixtures that File.Row must refuse, with a
// fragment of the expected message. (broken_nan's NaN row decodes: Row
// returns floats as stored; Read refuses it.)
var rowErrs = map[string]map[int]string{
	"broken_mask_shape.pkl": {1: "mask is 8×8 but hu_array_old is 16×16"},
	"broken_ndim3.pkl":      {3: "shape [1 16 16] is not 2-D"},
	"broken_cell_none.pkl":  {1: "mask: pickle: bad array cell: cell is a None"},
	"broken_huge_shape.pkl": {0: "100000×100000 exceeds"},
	// Masks must be 0/1 (issue 15).
	"p2_dtypes.pkl":          {1: "mask value 3 at pixel 132 (row 8, col 4) is not 0 or 1 (20 of 256 pixels are neither)"},
	"p5_dtypes.pkl":          {1: "mask value 3 at pixel 132 (row 8, col 4) is not 0 or 1"},
	"broken_mask_values.pkl": {1: "mask value 0.5 at pixel 35 (row 2, col 3)", 2: "mask value 2 at pixel 68 (row 4, col 4)", 3: "mask value -1 at pixel 1 (row 0, col 1)", 4: "mask value -1 at pixel 86 (row 5, col 6)"},
}

// openErrs lists the fixtures Open must refuse.
var openErrs = map[string]error{
	"broken_missing_column.pkl": pickle.ErrLayout,
	"broken_not_frame.pkl":      pickle.ErrLayout,
	"broken_truncated.pkl":      pickle.ErrTruncated,
	"broken_unknown_class.pkl":  pickle.ErrUnknownClass,
}

// TestFixturesMatchPandas decodes every fixture pandas can read and checks
// each array bit for bit against the digest of what pd.read_pickle returned.
func TestFixturesMatchPandas(t *testing.T) {
	protocols := map[int]bool{}
	for name, want := range loadExpected(t) {
		t.Run(name, func(t *testing.T) {
			f, err := pickle.Open(filepath.Join("testdata", name))
			if werr, ok := openErrs[name]; ok {
				if !errors.Is(err, werr) {
					t.Fatalf("Open: got %v, want %v", err, werr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			protocols[f.Protocol()] = true
			if f.Protocol() != want.Protocol {
				t.Errorf("protocol %d, want %d", f.Protocol(), want.Protocol)
			}
			if f.Len() != want.NRows || len(want.Rows) != want.NRows {
				t.Fatalf("%d rows, want %d", f.Len(), want.NRows)
			}
			if got := strings.Join(f.Columns(), ","); got != strings.Join(want.Columns, ",") {
				t.Errorf("columns %s, want %s", got, strings.Join(want.Columns, ","))
			}
			hasLung := strings.Contains(","+strings.Join(want.Columns, ",")+",", ",hu_array,")
			for i, w := range want.Rows {
				r, err := f.Row(i)
				if frag, bad := rowErrs[name][i]; bad {
					if err == nil || !strings.Contains(err.Error(), frag) || !errors.Is(err, pickle.ErrCell) {
						t.Errorf("row %d: got error %v, want ErrCell with %q", i, err, frag)
					}
					continue
				}
				if err != nil {
					t.Errorf("row %d: %v", i, err)
					continue
				}
				if r.ID != w.ID || f.ID(i) != w.ID || r.Label != w.Label {
					t.Errorf("row %d: id %q label %q, want %q %q", i, r.ID, r.Label, w.ID, w.Label)
				}
				if r.Rows != w.HUShape[0] || r.Cols != w.HUShape[1] {
					t.Errorf("row %d: %d×%d, want %v", i, r.Rows, r.Cols, w.HUShape)
				}
				if got := shaFloats(r.HU); got != w.HUSHA {
					t.Errorf("row %d: hu_array_old (%s) differs from what pandas reads", i, w.HUDtype)
				}
				if got := shaBytes(r.Mask.Pix); got != w.MaskSHA {
					t.Errorf("row %d: mask (%s) differs from what pandas reads", i, w.MaskDtype)
				}
				if hasLung {
					if r.HULung == nil || shaFloats(r.HULung) != w.HULungSHA {
						t.Errorf("row %d: hu_array (%s) differs from what pandas reads", i, w.HULungDtype)
					}
				}
			}
		})
	}
	for p := 2; p <= 5; p++ {
		if !protocols[p] {
			t.Errorf("no fixture at protocol %d", p)
		}
	}
}

// TestReadItems checks what Read emits for the fixtures: ids, labels,
// positions, HU rounded to int16, masks, and per-row errors that do not
// stop the reader.
func TestReadItems(t *testing.T) {
	itemErrs := map[string]map[int]string{
		"broken_nan.pkl":      {2: "non-finite HU value NaN at pixel 53 (row 3, col 5)"},
		"broken_hu_range.pkl": {2: "every HU value is outside the int16 range [-32768, 32767] (the first is -1e+12 at pixel 0 (row 0, col 0))"},
	}
	for name, errs := range rowErrs {
		itemErrs[name] = errs
	}
	for name, want := range loadExpected(t) {
		if openErrs[name] != nil {
			continue
		}
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", name)
			var items []ingest.Item
			err := pickle.Read(context.Background(), path, func(it ingest.Item) error {
				items = append(items, it)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(items) != want.NRows {
				t.Fatalf("%d items, want %d", len(items), want.NRows)
			}
			f, err := pickle.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for i, it := range items {
				m := it.Meta
				if m.Id != want.Rows[i].ID || m.Source != "pkl" || m.SlicePosition != float64(i) || !m.SpacingAssumed {
					t.Errorf("item %d: meta %v", i, m)
				}
				if frag, bad := itemErrs[name][i]; bad {
					var re *pickle.RowError
					if !errors.As(it.Err, &re) || re.Row != i || re.ID != want.Rows[i].ID || !strings.Contains(it.Err.Error(), frag) {
						t.Errorf("item %d: error %v, want a RowError with %q", i, it.Err, frag)
					}
					if it.HU != nil || it.Mask != nil {
						t.Errorf("item %d: pixels on a failed row", i)
					}
					continue
				}
				if it.Err != nil {
					t.Errorf("item %d: %v", i, it.Err)
					continue
				}
				if m.Label != want.Rows[i].Label || int(m.Rows) != it.HU.Rows || int(m.Cols) != it.HU.Cols {
					t.Errorf("item %d: meta %v for a %d×%d slice", i, m, it.HU.Rows, it.HU.Cols)
				}
				r, err := f.Row(i)
				if err != nil {
					t.Fatal(err)
				}
				for k, v := range r.HU {
					w := math.Round(v)
					if w != float64(it.HU.Pix[k]) && w >= math.MinInt16 && w <= math.MaxInt16 {
						t.Fatalf("item %d pixel %d: HU %d from %v", i, k, it.HU.Pix[k], v)
					}
				}
				if string(it.Mask.Pix) != string(r.Mask.Pix) || it.Mask.Rows != r.Rows {
					t.Errorf("item %d: mask differs from Row's", i)
				}
				if strings.HasPrefix(name, "p") && !strings.Contains(name, "dtypes") {
					// make_fixtures.py pins the first three HU values.
					if got := it.HU.Pix[:3]; got[0] != -1024 || got[1] != 3 || got[2] != -3 {
						t.Errorf("item %d: pinned HU %v, want [-1024 3 -3]", i, got)
					}
				}
			}
		})
	}
}
