// Package segtest holds the test doubles that the segment and refine
// stages' tests share.
package segtest

import (
	"context"

	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
)

// EchoModel returns its input as probabilities and records each batch.
type EchoModel struct {
	Fixed   int
	Batches []int
}

func (m *EchoModel) Provider() string { return "test" }
func (m *EchoModel) FixedBatch() int  { return m.Fixed }
func (m *EchoModel) Run(in []float32, n int) ([]float32, error) {
	m.Batches = append(m.Batches, n)
	return append([]float32(nil), in...), nil
}

// Emitted records what a processor emits.
type Emitted struct{ Outs []stage.Out }

func (e *Emitted) Emit(_ context.Context, o stage.Out) error { e.Outs = append(e.Outs, o); return nil }
func (e *Emitted) Fail(context.Context, stage.Failure) error { return nil }

// Crop is a crop model card ("c", detector "d") with a window² input.
func Crop(window int) *model.Card {
	return &model.Card{Name: "c", Version: "2", Task: model.TaskCrop, Detector: "d", Threshold: 0.5,
		Input:         model.Shape{Channels: 1, Height: window, Width: window},
		Normalisation: model.Normalisation{Kind: "window", Center: 0, Width: 4096},
		Cascade:       &model.Cascade{Window: window, DetectThreshold: 0.25, MaxCandidates: 8}}
}
