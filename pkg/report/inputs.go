package report

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/lungseg/lungseg/ingest"
)

// IDPrefixes returns the slice-id prefix a replay gives each input: none
// for a single input, the input's base name and "/" for several (with
// "~2", "~3"… on repeated names). It mirrors pkg/replay, which makes the
// ids this package looks up.
func IDPrefixes(inputs []string) []string {
	out := make([]string, len(inputs))
	if len(inputs) == 1 {
		return out
	}
	seen := map[string]int{}
	for i, in := range inputs {
		base := strings.TrimSuffix(filepath.Base(filepath.Clean(in)), filepath.Ext(in))
		seen[base]++
		if seen[base] > 1 {
			base = fmt.Sprintf("%s~%d", base, seen[base])
		}
		out[i] = base + "/"
	}
	return out
}

// LoadInputs reads the replay's inputs again with the ingest formats and
// keeps the slices whose ids are wanted. Slices that fail to read are
// skipped (the replay reported them).
func LoadInputs(ctx context.Context, formats []ingest.Format, inputs []string, masksDir string, want map[string]bool) (map[string]Slice, error) {
	out := map[string]Slice{}
	prefixes := IDPrefixes(inputs)
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
