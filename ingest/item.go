// Package ingest reads CT slices from files (pandas pickles of the Mendeley
// dataset, DICOM, PNG pairs) and publishes them on lung.slices.raw. The
// format readers live in sub-packages; this package dispatches between
// them and holds the stage processor.
package ingest

import (
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// Item is one slice read from an input. When Err is set the slice could
// not be read (a bad row, a truncated file) and only Meta.Id (and what else
// was known) is meaningful; the reader goes on with the next slice.
type Item struct {
	Meta *lungsegv1.SliceMeta
	HU   *imgx.HU
	// Mask is the ground truth, nil when the input has none.
	Mask *imgx.Mask
	Err  error
}

// EmitFunc receives the items of an input in order. Returning an error
// stops the reader, which returns that error.
type EmitFunc func(Item) error
