package score

import (
	"context"
	"errors"
	"fmt"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

// Stage is the score stage processor: it maps each probability map back to
// the slice's original grid, thresholds it at the model's threshold and
// scores it against the ground truth. Safe for concurrent use.
type Stage struct{}

// ScoreOutput computes the Score of one model output.
func ScoreOutput(o *lungsegv1.ModelOutput) (*lungsegv1.Score, error) {
	if o.Meta == nil {
		return nil, errors.New("score: output without slice metadata")
	}
	h, w := int(o.Height), int(o.Width)
	if err := imgx.CheckSize(h, w); err != nil {
		return nil, fmt.Errorf("score: probability map: %w", err)
	}
	prob, err := imgx.DecodeFloat32(h*w, o.Prob)
	if err != nil {
		return nil, fmt.Errorf("score: probability map: %w", err)
	}
	rows, cols := int(o.Meta.Rows), int(o.Meta.Cols)
	if err := imgx.CheckSize(rows, cols); err != nil {
		return nil, fmt.Errorf("score: slice %s: %w", o.Meta.Id, err)
	}
	full := imgx.ResizeBilinear(prob, h, w, rows, cols)
	thr := float64(o.Threshold)
	s := &lungsegv1.Score{Meta: o.Meta, Model: o.Model, ModelVersion: o.ModelVersion, HasTruth: o.HasMask, InferenceUs: o.InferenceUs}
	var pred *imgx.Mask
	if o.HasMask {
		truth, err := imgx.UnpackMask(rows, cols, o.MaskBits)
		if err != nil {
			return nil, fmt.Errorf("score: slice %s truth: %w", o.Meta.Id, err)
		}
		var m Metrics
		m, pred = Compare(full, thr, truth)
		s.Dice, s.Iou, s.Rmse, s.BothEmpty = m.Dice, m.IoU, m.RMSE, m.BothEmpty
		s.TruthPixels, s.PredictedPixels = int64(m.Truth), int64(m.Predicted)
	} else {
		pred = Threshold(full, rows, cols, thr)
		s.PredictedPixels = int64(pred.Count())
	}
	s.PredBits = pred.PackBits()
	var inside []float32
	for i, v := range pred.Pix {
		if v != 0 {
			inside = append(inside, full[i])
		}
	}
	s.PredProb = imgx.EncodeFloat32(inside)
	return s, nil
}

// Process implements stage.Processor.
func (Stage) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	var o lungsegv1.ModelOutput
	if err := proto.Unmarshal(m.Data, &o); err != nil {
		return stage.Permanentf("score: decoding model output: %w", err)
	}
	s, err := ScoreOutput(&o)
	if err != nil {
		return stage.Permanent(err)
	}
	b, err := proto.Marshal(s)
	if err != nil {
		return err
	}
	return e.Emit(ctx, stage.Out{Subject: bus.ScoresSubject(o.Model, o.Meta.ReplayId), Data: b,
		SliceID: o.Meta.Id, ReplayID: o.Meta.ReplayId, Model: o.Model})
}
