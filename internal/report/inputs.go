package report

import (
	"context"
	"fmt"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/internal/replay"
)

// LoadInputs reads the replay's inputs again with the ingest formats and
// keeps the slices whose ids are wanted. Slices that fail to read are
// skipped (the replay reported them).
func LoadInputs(ctx context.Context, formats []ingest.Format, inputs []string, masksDir string, want map[string]bool) (map[string]Slice, error) {
	out := map[string]Slice{}
	prefixes := replay.IDPrefixes(inputs)
	for i, in := range inputs {
		err := ingest.Walk(ctx, formats, in, masksDir, func(it ingest.Item) error {
			if it.Err != nil || it.Meta == nil || it.HU == nil {
				return nil
			}
			id := prefixes[i] + it.Meta.Id
			if want[id] {
				out[id] = Slice{HU: it.HU, Truth: it.Mask}
			}
			return nil
		})
		if err != nil {
			return out, fmt.Errorf("report: reading %s: %w", in, err)
		}
	}
	return out, nil
}

// Wanted returns the ids of every chosen slice.
func Wanted(picks map[string][]Choice) map[string]bool {
	w := map[string]bool{}
	for _, cs := range picks {
		for _, c := range cs {
			w[c.Result.ID] = true
		}
	}
	return w
}
