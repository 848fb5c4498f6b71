// Package preprocess turns CT slices in HU into model input: the HU window
// of the model's card, resized to the model's input size. One slice yields
// one ModelInput per model it is meant for, on lung.ready.<model>; the
// original geometry and ground truth travel along so score can map the
// result back to the original grid.
package preprocess

import (
	"context"
	"errors"
	"fmt"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

// ErrNoModels reports a slice that names no model and a preprocessor with
// no default.
var ErrNoModels = errors.New("preprocess: slice names no model and no default is configured")

// Cards looks up model cards by name.
type Cards interface {
	Get(name string) (*model.Card, error)
}

// Stage is the preprocess stage processor. It is safe for concurrent use.
type Stage struct {
	Cards Cards
	// Defaults are the models for slices that name none.
	Defaults []string
	// TTA asks segment for test-time augmentation on every input.
	TTA bool
}

// DecodeSlice decodes and validates a raw slice.
func DecodeSlice(b []byte) (*lungsegv1.Slice, *imgx.HU, *imgx.Mask, error) {
	var s lungsegv1.Slice
	if err := proto.Unmarshal(b, &s); err != nil {
		return nil, nil, nil, fmt.Errorf("preprocess: decoding slice: %w", err)
	}
	if s.Meta == nil {
		return nil, nil, nil, errors.New("preprocess: slice without metadata")
	}
	if s.HuRef != nil && len(s.Hu) == 0 {
		return nil, nil, nil, fmt.Errorf("preprocess: slice %s: object-store pixels are not supported by this worker", s.Meta.Id)
	}
	rows, cols := int(s.Meta.Rows), int(s.Meta.Cols)
	hu, err := imgx.DecodeHU(rows, cols, s.Hu)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("preprocess: slice %s: %w", s.Meta.Id, err)
	}
	var m *imgx.Mask
	if s.HasMask {
		if m, err = imgx.UnpackMask(rows, cols, s.MaskBits); err != nil {
			return nil, nil, nil, fmt.Errorf("preprocess: slice %s mask: %w", s.Meta.Id, err)
		}
	}
	return &s, hu, m, nil
}

// Input windows and resizes one slice for one model: the returned values
// are the model's NCHW input for a batch of one.
func Input(hu *imgx.HU, card *model.Card) []float32 {
	f := make([]float32, len(hu.Pix))
	for i, v := range hu.Pix {
		f[i] = card.Normalisation.Apply(float64(v))
	}
	return imgx.ResizeBilinear(f, hu.Rows, hu.Cols, card.Input.Height, card.Input.Width)
}

// Process implements stage.Processor.
func (p *Stage) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	s, hu, _, err := DecodeSlice(m.Data)
	if err != nil {
		return stage.Permanent(err)
	}
	models := s.Meta.Models
	if len(models) == 0 {
		models = p.Defaults
	}
	if len(models) == 0 {
		return stage.Permanent(ErrNoModels)
	}
	for _, name := range models {
		card, err := p.Cards.Get(name)
		if err != nil {
			if ferr := e.Fail(ctx, stage.Failure{SliceID: s.Meta.Id, ReplayID: s.Meta.ReplayId, Model: name, Err: err}); ferr != nil {
				return ferr
			}
			continue
		}
		in := &lungsegv1.ModelInput{
			Meta:         s.Meta,
			Model:        card.Name,
			ModelVersion: card.Version,
			Channels:     1,
			Height:       int32(card.Input.Height),
			Width:        int32(card.Input.Width),
			Tensor:       imgx.EncodeFloat32(Input(hu, card)),
			MaskBits:     s.MaskBits,
			HasMask:      s.HasMask,
			Tta:          p.TTA || card.TTA,
		}
		b, err := proto.Marshal(in)
		if err != nil {
			return err
		}
		if err := e.Emit(ctx, stage.Out{Subject: bus.ReadySubject(card.Name), Data: b,
			SliceID: s.Meta.Id, ReplayID: s.Meta.ReplayId, Model: card.Name}); err != nil {
			return err
		}
	}
	return nil
}
