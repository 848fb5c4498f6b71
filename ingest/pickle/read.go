package pickle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"strings"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// Source is the SliceMeta.Source of every slice this package reads.
const Source = "pkl"

// Read emits one ingest.Item per row of the pickle at path, in order.
// Meta.Id is the row's index label, Meta.SlicePosition its row number,
// Meta.Label the label1 value, Meta.SeriesUid the value of the first of
// SeriesColumns present (none in the Mendeley layout); spacing is unknown
// (SpacingAssumed). HU
// comes from hu_array_old (rounded to int16, NaN refused), Mask from mask.
// A row that cannot be decoded is emitted with Err set (a *RowError) and
// the reader goes on; a file that cannot be scanned (truncated, an unknown
// class, not a DataFrame) returns an error before any item.
func Read(ctx context.Context, path string, fn ingest.EmitFunc) error {
	f, err := open(ctx, path)
	if err != nil {
		return fmt.Errorf("decoding %s: %w", path, err)
	}
	defer f.Close()
	return f.Emit(ctx, fn)
}

// Emit emits the items of all rows, as Read does.
func (f *File) Emit(ctx context.Context, fn ingest.EmitFunc) error {
	for i := range f.nrows {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(f.Item(i)); err != nil {
			return err
		}
	}
	return nil
}

// Item decodes row i into an ingest.Item (Err set when the row is bad).
//
// What it accepts but changes goes into Meta.Warnings: a label1 that is
// not a str (an int or float is used as text, None or NaN leaves the
// slice without a label), and HU values outside the int16 range, which
// are clamped (a row whose every value is outside is an error). A mask
// value other than 0 and 1, like a non-finite HU, is an error.
func (f *File) Item(i int) ingest.Item {
	meta := &lungsegv1.SliceMeta{
		Id:             f.id(i),
		Source:         Source,
		SpacingAssumed: true,
		SlicePosition:  float64(i),
	}
	it := ingest.Item{Meta: meta}
	var missingLabel bool
	if f.label != nil {
		var w string
		if w, missingLabel = labelWarning(f.label[i]); w != "" {
			meta.Warnings = append(meta.Warnings, w)
		}
	}
	fail := func(err error) ingest.Item {
		it.HU, it.Mask = nil, nil
		it.Err = &RowError{Row: i, ID: meta.Id, Err: err}
		return it
	}
	var cl clamped
	if label, hu, mask, c, ok := f.fastItemClamped(i); ok {
		meta.Label = label
		meta.Rows, meta.Cols = int32(hu.Rows), int32(hu.Cols)
		it.HU, it.Mask, cl = hu, mask, c
	} else {
		r, err := f.row(i, false, true)
		if r != nil {
			meta.Label = r.Label
		}
		if err == nil {
			for k, x := range r.HU {
				cl.add(x, k)
			}
			it.HU, err = imgx.HUFromFloat(r.Rows, r.Cols, r.HU)
		}
		if err != nil {
			return fail(err)
		}
		meta.Rows, meta.Cols = int32(r.Rows), int32(r.Cols)
		it.Mask = r.Mask
	}
	if missingLabel {
		meta.Label = ""
	}
	if f.series != nil {
		// A series (or patient) column: its rows form a series. A cell
		// that is None, NaN or not text leaves the row alone.
		if v := f.series[i]; v != nil {
			if x, ok := v.(float64); !ok || !math.IsNaN(x) {
				if t, err := f.text(v); err == nil && t != "" {
					meta.SeriesUid = t
					if patientColumns[f.seriesCol] {
						// A patient id groups the rows but never travels:
						// messages and logs carry a digest of it.
						sum := sha256.Sum256([]byte(t))
						meta.SeriesUid = "patient-" + hex.EncodeToString(sum[:8])
					}
				} else {
					meta.Warnings = append(meta.Warnings, fmt.Sprintf("%s is not text (%s): the slice has no series", f.seriesCol, typeName(v)))
				}
			}
		}
	}
	if cl.n > 0 {
		n, cols := len(it.HU.Pix), it.HU.Cols
		where := fmt.Sprintf("%g at pixel %d (row %d, col %d)", cl.val, cl.first, cl.first/cols, cl.first%cols)
		if cl.n == n {
			return fail(fmt.Errorf("%w: %s: every HU value is outside the int16 range [-32768, 32767] (the first is %s)", ErrCell, ColHU, where))
		}
		meta.Warnings = append(meta.Warnings, fmt.Sprintf("%s: %d of %d HU values outside the int16 range clamped to it (the first is %s)", ColHU, cl.n, n, where))
	}
	return it
}

// patientColumns are the SeriesColumns that hold a patient id, which
// is replaced by a digest.
var patientColumns = map[string]bool{"patient_id": true, "PatientID": true}

// labelWarning says what is odd about a label1 cell, if anything, and
// whether it stands for no label at all (None, NaN).
func labelWarning(v any) (warning string, missing bool) {
	switch x := v.(type) {
	case string:
		return "", false
	case *span:
		if x.enc != encRaw {
			return "", false
		}
		return ColLabel + " is bytes, not a str; used as text", false
	case nil:
		return ColLabel + " is None: the slice has no label", true
	case float64:
		if math.IsNaN(x) {
			return ColLabel + " is NaN (a missing value): the slice has no label", true
		}
		return fmt.Sprintf("%s is a float (%s), not a str; used as text", ColLabel, pyFloat(x)), false
	}
	article := "a"
	if tn := typeName(v); tn != "" && strings.ContainsRune("aeiou", rune(tn[0])) {
		article = "an"
	}
	return fmt.Sprintf("%s is %s %s (%v), not a str; used as text", ColLabel, article, typeName(v), v), false
}
