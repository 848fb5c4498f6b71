package pickle

import (
	"context"
	"fmt"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// Source is the SliceMeta.Source of every slice this package reads.
const Source = "pkl"

// Read emits one ingest.Item per row of the pickle at path, in order.
// Meta.Id is the row's index label, Meta.SlicePosition its row number,
// Meta.Label the label1 value; spacing is unknown (SpacingAssumed). HU
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
func (f *File) Item(i int) ingest.Item {
	meta := &lungsegv1.SliceMeta{
		Id:             f.id(i),
		Source:         Source,
		SpacingAssumed: true,
		SlicePosition:  float64(i),
	}
	it := ingest.Item{Meta: meta}
	if label, hu, mask, ok := f.fastItem(i); ok {
		meta.Label = label
		meta.Rows, meta.Cols = int32(hu.Rows), int32(hu.Cols)
		it.HU, it.Mask = hu, mask
		return it
	}
	r, err := f.row(i, false, true)
	if r != nil {
		meta.Label = r.Label
	}
	if err == nil {
		it.HU, err = imgx.HUFromFloat(r.Rows, r.Cols, r.HU)
	}
	if err != nil {
		it.Err = &RowError{Row: i, ID: meta.Id, Err: err}
		return it
	}
	meta.Rows, meta.Cols = int32(r.Rows), int32(r.Cols)
	it.Mask = r.Mask
	return it
}
