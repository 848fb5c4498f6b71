package main

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/lungseg/lungseg/score/seg"
)

// segFiles is replay --seg-out: it gathers the replay's scores of DICOM
// slices and, once the replay is done, writes each series' SEG and TID
// 1500 SR per model as files (score/seg.Collector without a bus). A nil
// *segFiles does nothing.
type segFiles struct {
	dir string
	col *seg.Collector
}

// newSEGFiles returns nil when dir is "". cfg is the findings stage's
// configuration, so the SR's nodules are the report's.
func newSEGFiles(dir string, cfg findings.Config, log zerolog.Logger) *segFiles {
	if dir == "" {
		return nil
	}
	return &segFiles{dir: dir, col: &seg.Collector{Dir: dir, Findings: cfg, Log: log.With().Str("stage", seg.StageName).Logger()}}
}

func (w *segFiles) add(s *lungsegv1.Score) {
	if w != nil {
		w.col.Add(s)
	}
}

// write writes every series gathered; a series that fails is logged and
// the first error returned.
func (w *segFiles) write(ctx context.Context) error {
	if w == nil {
		return nil
	}
	n, err := w.col.Flush(ctx, true)
	fmt.Fprintf(stderr, "seg-out: %d series written as SEG and SR under %s\n", n, w.dir)
	if err != nil {
		return fmt.Errorf("--seg-out: %w", err)
	}
	return nil
}
