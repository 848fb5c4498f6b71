package score

import (
	"context"
	"errors"
	"fmt"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

// Stage is the score stage processor: it maps each probability map back to
// the slice's original grid, thresholds it at the model's threshold and
// scores it against the ground truth. A cascade's map (the refine stage's,
// already on the slice's grid, with the pixels outside its crop windows
// capped at the threshold) is thresholded with ">" instead of ">=", so
// that the capped pixels stay out of the mask. A detector's output left
// to refine (refine_only: its cascade was selected, not the detector) is
// acknowledged without a score. Safe for concurrent use.
type Stage struct{}

// Prediction maps a model output to the slice's grid: the probability map
// resized to rows×cols (a cascade's refined map is on that grid already;
// a crop model's padded window is cut out at its placement, unresized) and
// the predicted mask cut from it at the output's threshold. When the
// output carries a lung field (pkg/lungfield), pixels outside it are
// removed from the mask and their probability set to 0, so that the score
// and the findings see only predictions inside the field.
func Prediction(o *lungsegv1.ModelOutput) (prob []float32, pred *imgx.Mask, err error) {
	prob, pred, _, err = prediction(o)
	return prob, pred, err
}

// prediction is Prediction, also returning how many predicted pixels the
// lung field removed.
func prediction(o *lungsegv1.ModelOutput) (prob []float32, pred *imgx.Mask, removed int, err error) {
	if prob, pred, err = rawPrediction(o); err != nil {
		return nil, nil, 0, err
	}
	field, err := lungfield.FromBits(pred.Rows, pred.Cols, o.FieldBits, o.HasField)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("score: slice %s: %w", o.Meta.Id, err)
	}
	if field == nil {
		return prob, pred, 0, nil
	}
	removed = lungfield.Remove(pred, field)
	for i, v := range field.Pix {
		if v == 0 {
			prob[i] = 0
		}
	}
	return prob, pred, removed, nil
}

// rawPrediction is Prediction without the lung field.
func rawPrediction(o *lungsegv1.ModelOutput) (prob []float32, pred *imgx.Mask, err error) {
	if o.Meta == nil {
		return nil, nil, errors.New("score: output without slice metadata")
	}
	h, w := int(o.Height), int(o.Width)
	if err := imgx.CheckSize(h, w); err != nil {
		return nil, nil, fmt.Errorf("score: probability map: %w", err)
	}
	small, err := imgx.DecodeFloat32(h*w, o.Prob)
	if err != nil {
		return nil, nil, fmt.Errorf("score: probability map: %w", err)
	}
	rows, cols := int(o.Meta.Rows), int(o.Meta.Cols)
	if err := imgx.CheckSize(rows, cols); err != nil {
		return nil, nil, fmt.Errorf("score: slice %s: %w", o.Meta.Id, err)
	}
	if o.Placement != nil {
		return placed(o, small)
	}
	if o.Cascade {
		if h != rows || w != cols {
			return nil, nil, fmt.Errorf("score: slice %s: cascade map of %d×%d for a %d×%d slice", o.Meta.Id, h, w, rows, cols)
		}
		return small, Above(small, rows, cols, o.Threshold), nil
	}
	full := imgx.ResizeBilinear(small, h, w, rows, cols)
	return full, Threshold(full, rows, cols, float64(o.Threshold)), nil
}

// Above thresholds a cascade's refined map: pixels with a value > thr,
// strictly and in float32, so that a pixel capped at thr is never in the
// mask.
func Above(prob []float32, rows, cols int, thr float32) *imgx.Mask {
	m := imgx.NewMask(rows, cols)
	for i, v := range prob {
		if v > thr {
			m.Pix[i] = 1
		}
	}
	return m
}

// ScoreOutput computes the Score of one model output.
func ScoreOutput(o *lungsegv1.ModelOutput) (*lungsegv1.Score, error) {
	full, pred, removed, err := prediction(o)
	if err != nil {
		return nil, err
	}
	rows, cols := int(o.Meta.Rows), int(o.Meta.Cols)
	s := &lungsegv1.Score{Meta: o.Meta, Model: o.Model, ModelVersion: o.ModelVersion, HasTruth: o.HasMask, InferenceUs: o.InferenceUs,
		HasField: o.HasField, OutsideFieldPixels: int64(removed)}
	if o.HasMask {
		truth, err := imgx.UnpackMask(rows, cols, o.MaskBits)
		if err != nil {
			return nil, fmt.Errorf("score: slice %s truth: %w", o.Meta.Id, err)
		}
		m := CompareMask(full, pred, truth)
		s.Dice, s.Iou, s.Rmse, s.BothEmpty = m.Dice, m.IoU, m.RMSE, m.BothEmpty
		s.TruthPixels, s.PredictedPixels = int64(m.Truth), int64(m.Predicted)
		s.TruthDiameterMm = imgx.LargestDiameter(truth, o.Meta.SpacingRowMm, o.Meta.SpacingColMm)
	} else {
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

// FromScore returns the metrics a Score message carries (its Dice, IoU,
// RMSE, pixel counts and the truth's diameter), from which
// Metrics.TruePositives recovers the slice's true positives exactly.
func FromScore(s *lungsegv1.Score) Metrics {
	return Metrics{Dice: s.Dice, IoU: s.Iou, RMSE: s.Rmse, BothEmpty: s.BothEmpty,
		Truth: int(s.TruthPixels), Predicted: int(s.PredictedPixels), TruthDiameterMm: s.TruthDiameterMm}
}

// Process implements stage.Processor.
func (Stage) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	var o lungsegv1.ModelOutput
	if err := proto.Unmarshal(m.Data, &o); err != nil {
		return stage.Permanentf("score: decoding model output: %w", err)
	}
	if o.RefineOnly {
		return nil
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
