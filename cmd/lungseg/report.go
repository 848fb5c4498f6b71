package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score"
)

func printReport(rep *replay.Report) {
	fmt.Printf("\nreplay %s: %d slices ingested, %d inputs rejected, %d errors, %.1fs\n\n",
		rep.ReplayID, rep.Ingested, rep.Rejected, len(rep.Errors), rep.Seconds)
	if len(rep.Models) > 0 {
		score.WriteTable(os.Stdout, rep.Models)
		fmt.Println("Dice mean: per-slice Dice ± sd over the slices whose ground truth has pixels ('with truth'); by size, the same mean by the")
		fmt.Println("longest diameter of the truth's largest 8-connected component in mm, with the number of slices in brackets ('-': none).")
		fmt.Println("'empty clean/FP': slices whose truth is empty, without and with a predicted pixel (false-positive slices).")
		fmt.Println("Dice/IoU pooled: over all pixels of all slices, 2·ΣTP/(Σtruth+Σpredicted) and ΣTP/(Σtruth+Σpredicted−ΣTP), as the model cards measure Dice.")
	}
	if rep.Unscored > 0 {
		fmt.Printf("%d slice×model results had no ground truth and are not in the table.\n", rep.Unscored)
	}
	if len(rep.Errors) > 0 {
		fmt.Printf("\nerrors:\n")
		for i, e := range rep.Errors {
			if i == 20 {
				fmt.Printf("  ... and %d more (see the JSON report)\n", len(rep.Errors)-20)
				break
			}
			m := ""
			if e.Model != "" {
				m = " [" + e.Model + "]"
			}
			fmt.Printf("  %s (%s%s): %s\n", e.ID, e.Stage, m, e.Error)
		}
	}
}

// maskWriter writes each predicted mask as an 8-bit PNG (0/255) at the
// input's original resolution, as DIR/MODEL/<slice id>.png.
func maskWriter(dir string) func(*lungsegv1.Score) error {
	return func(s *lungsegv1.Score) error {
		rows, cols := int(s.Meta.Rows), int(s.Meta.Cols)
		m, err := imgx.UnpackMask(rows, cols, s.PredBits)
		if err != nil {
			return fmt.Errorf("masks-out: slice %s: %w", s.Meta.Id, err)
		}
		id := filepath.Clean(filepath.FromSlash(s.Meta.Id))
		if filepath.IsAbs(id) || strings.HasPrefix(id, "..") {
			return fmt.Errorf("masks-out: slice id %q escapes the output folder", s.Meta.Id)
		}
		return pngpair.WriteMask(filepath.Join(dir, s.Model, id+".png"), m)
	}
}
