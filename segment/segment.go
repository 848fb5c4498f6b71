// Package segment runs a model on each prepared slice: it consumes
// lung.ready.<model> with one durable consumer per model, so every model
// sees every slice and the workers of one model share the work, and
// publishes probability maps on lung.masks.<model>. The ONNX Runtime
// session lives in segment/infer.
package segment

import (
	"context"
	"fmt"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

// Model runs a batch of n single-channel images (n×H×W float32) and
// returns probabilities in the same layout.
type Model interface {
	Run(input []float32, n int) ([]float32, error)
	Provider() string
}

// Stage is the segment processor of one model. Safe for concurrent use
// when its Model is.
type Stage struct {
	Card  *model.Card
	Model Model
}

// Predict runs the model on one input, averaging over horizontal and
// vertical flips when tta is set.
func Predict(m Model, in []float32, h, w int, tta bool) ([]float32, error) {
	if !tta {
		return m.Run(in, 1)
	}
	batch := make([]float32, 3*h*w)
	copy(batch, in)
	flipH(batch[h*w:2*h*w], in, h, w)
	flipV(batch[2*h*w:], in, h, w)
	out, err := m.Run(batch, 3)
	if err != nil {
		return nil, err
	}
	res := make([]float32, h*w)
	tmp := make([]float32, h*w)
	copy(res, out[:h*w])
	flipH(tmp, out[h*w:2*h*w], h, w)
	for i := range res {
		res[i] += tmp[i]
	}
	flipV(tmp, out[2*h*w:], h, w)
	for i := range res {
		res[i] = (res[i] + tmp[i]) / 3
	}
	return res, nil
}

func flipH(dst, src []float32, h, w int) {
	for y := 0; y < h; y++ {
		r := src[y*w : (y+1)*w]
		d := dst[y*w : (y+1)*w]
		for x := range r {
			d[w-1-x] = r[x]
		}
	}
}

func flipV(dst, src []float32, h, w int) {
	for y := 0; y < h; y++ {
		copy(dst[(h-1-y)*w:(h-y)*w], src[y*w:(y+1)*w])
	}
}

// Process implements stage.Processor.
func (s *Stage) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	var in lungsegv1.ModelInput
	if err := proto.Unmarshal(m.Data, &in); err != nil {
		return stage.Permanentf("segment: decoding model input: %w", err)
	}
	if in.Meta == nil {
		return stage.Permanentf("segment: input without slice metadata")
	}
	c := s.Card
	if base, _ := model.SplitVariant(in.Model); base != c.Name {
		return stage.Permanentf("segment: input for model %q reached worker of %q", in.Model, c.Name)
	}
	h, w := c.Input.Height, c.Input.Width
	if int(in.Height) != h || int(in.Width) != w || int(in.Channels) != c.Input.Channels {
		return stage.Permanentf("segment: slice %s: input %d×%d×%d, model %s wants %d×%d×%d",
			in.Meta.Id, in.Channels, in.Height, in.Width, c.Name, c.Input.Channels, h, w)
	}
	x, err := imgx.DecodeFloat32(h*w, in.Tensor)
	if err != nil {
		return stage.Permanentf("segment: slice %s: %w", in.Meta.Id, err)
	}
	start := time.Now()
	prob, err := Predict(s.Model, x, h, w, in.Tta)
	if err != nil {
		return fmt.Errorf("segment: running %s on %s: %w", c.Name, in.Meta.Id, err)
	}
	out := &lungsegv1.ModelOutput{
		Meta: in.Meta, Model: in.Model, ModelVersion: c.Version,
		Height: int32(h), Width: int32(w), Prob: imgx.EncodeFloat32(prob),
		Threshold: float32(c.Threshold), MaskBits: in.MaskBits, HasMask: in.HasMask,
		Provider: s.Model.Provider(), InferenceUs: time.Since(start).Microseconds(),
	}
	b, err := proto.Marshal(out)
	if err != nil {
		return err
	}
	return e.Emit(ctx, stage.Out{Subject: bus.MasksSubject(c.Name), Data: b,
		SliceID: in.Meta.Id, ReplayID: in.Meta.ReplayId, Model: in.Model})
}
