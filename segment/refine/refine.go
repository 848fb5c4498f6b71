// Package refine is the refine stage of the "<detector>+crop" cascade: it
// consumes a detector's output on lung.masks.<detector>, with one durable
// consumer per detector, and for each output that asks for it (the
// ModelOutput's refine flag, which segment sets when the cascade is
// selected) places crop windows on the detector's map resized to the
// slice's native grid, inside the slice's lung field (segment/cascade),
// runs the crop model in them on the slice's native HU, merges the windows
// into the detector's map and publishes the refined native-grid map as
// the model "<detector>+crop" on lung.masks.<detector>+crop. Score
// thresholds it like any whole-slice output (with ">", see
// ModelOutput.cascade) and knows nothing of windows.
//
// So a detector runs once per slice in segment whatever the selection: a
// cascade selected beside its detector costs the crop model's windows
// only.
package refine

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/segment"
	"github.com/lungseg/lungseg/segment/cascade"
	"github.com/lungseg/lungseg/segment/verify"
	"google.golang.org/protobuf/proto"
)

// StageName is the refine stage's name (its runners, metrics label and
// error subject lung.errors.refine.<replay>).
const StageName = "refine"

// Durable is the durable consumer name of a detector's refine worker.
func Durable(detector string) string { return StageName + "-" + detector }

// Stage is the refine processor of one detector. Safe for concurrent use
// when CropModel is.
type Stage struct {
	// Detector is the registry name of the detector whose outputs this
	// worker refines (the subject lung.masks.<Detector> it consumes).
	Detector string
	// Crop is the crop model paired with the detector
	// (model.Registry.Crop) and CropModel its session. Without them,
	// outputs to refine fail as permanent errors.
	Crop      *model.Card
	CropModel segment.Model
	// Objects fetches the native HU when the detector's output holds a
	// reference to the object store instead of the pixels.
	Objects segment.PixelSource
	// Verifier, when set and the crop card has a verifier section, judges
	// the components of the refined map of a slice larger than the crop
	// window (segment/verify); a bare crop is one candidate already.
	Verifier verify.Classifier
}

// Process implements stage.Processor. A detector output without the
// refine flag (its cascade not selected) is acknowledged with nothing
// published.
func (s *Stage) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	var o lungsegv1.ModelOutput
	if err := proto.Unmarshal(m.Data, &o); err != nil {
		return stage.Permanentf("refine: decoding model output: %w", err)
	}
	if o.Meta == nil {
		return stage.Permanentf("refine: output without slice metadata")
	}
	if !o.Refine {
		return nil
	}
	if base, _ := model.SplitVariant(o.Model); base != s.Detector {
		return stage.Permanentf("refine: output of model %q reached the refine worker of %q", o.Model, s.Detector)
	}
	if s.Crop == nil || s.CropModel == nil {
		return stage.Permanentf("refine: slice %s: no crop model loaded for %s%s", o.Meta.Id, s.Detector, model.CropSuffix)
	}
	h, w := int(o.Height), int(o.Width)
	if err := imgx.CheckSize(h, w); err != nil {
		return stage.Permanentf("refine: slice %s: detector map: %w", o.Meta.Id, err)
	}
	prob, err := imgx.DecodeFloat32(h*w, o.Prob)
	if err != nil {
		return stage.Permanentf("refine: slice %s: detector map: %w", o.Meta.Id, err)
	}
	hu, err := segment.NativeHU(ctx, s.Objects, o.Meta, o.NativeHu, o.NativeHuRef, o.Model)
	if err != nil {
		return err
	}
	start := time.Now()
	out, err := s.Refine(&o, prob, hu)
	if err != nil {
		return err
	}
	out.InferenceUs = time.Since(start).Microseconds()
	b, err := proto.Marshal(out)
	if err != nil {
		return err
	}
	return e.Emit(ctx, stage.Out{Subject: bus.MasksSubject(out.Model), Data: b,
		SliceID: out.Meta.Id, ReplayID: out.Meta.ReplayId, Model: out.Model})
}

// Refine builds the cascade's output from a detector output (o), its
// probability map (prob, o.Height×o.Width) and the slice's native HU:
// the windows PlanIn places on the native map inside o's lung field, the
// crop model's probabilities in them, and the refined map cascade.Merge
// makes of both, on the native grid, with the crop model's threshold.
// The output carries o's slice, ground truth and lung field, the
// detector's version, the crop model and the windows (without their
// probabilities), but not the native HU.
func (s *Stage) Refine(o *lungsegv1.ModelOutput, prob []float32, hu *imgx.HU) (*lungsegv1.ModelOutput, error) {
	p, err := cascade.ParamsOf(s.Crop)
	if err != nil {
		return nil, stage.Permanent(err)
	}
	field, err := lungfield.FromBits(hu.Rows, hu.Cols, o.FieldBits, o.HasField)
	if err != nil {
		return nil, stage.Permanentf("refine: slice %s: lung field: %w", o.Meta.Id, err)
	}
	native := imgx.ResizeBilinear(prob, int(o.Height), int(o.Width), hu.Rows, hu.Cols)
	wins := cascade.PlanIn(native, hu.Rows, hu.Cols, p, field)
	probs, err := segment.RunWindows(s.CropModel, s.Crop, hu, wins)
	if err != nil {
		return nil, fmt.Errorf("refine: running %s on %s: %w", s.Crop.Name, o.Meta.Id, err)
	}
	refined, err := cascade.Merge(native, hu.Rows, hu.Cols, wins, probs, p.Threshold)
	if err != nil {
		return nil, stage.Permanentf("refine: slice %s: %w", o.Meta.Id, err)
	}
	if s.Verifier != nil && s.Crop.Verifier != nil && (hu.Rows > p.Window || hu.Cols > p.Window) {
		// Merge caps what lies outside the windows at the threshold and
		// score keeps what is above it: components are the pixels > thr.
		above := math.Nextafter32(p.Threshold, 1)
		if _, err := verify.Apply(s.Verifier, s.Crop.Verifier, hu, refined, above, field); err != nil {
			return nil, fmt.Errorf("refine: verifying %s's components on %s: %w", s.Crop.Name, o.Meta.Id, err)
		}
	}
	out := &lungsegv1.ModelOutput{
		Meta: o.Meta, Model: s.Detector + model.CropSuffix, ModelVersion: o.ModelVersion,
		Height: int32(hu.Rows), Width: int32(hu.Cols), Prob: imgx.EncodeFloat32(refined),
		Threshold: p.Threshold, MaskBits: o.MaskBits, HasMask: o.HasMask,
		FieldBits: o.FieldBits, HasField: o.HasField,
		Provider: s.CropModel.Provider(),
		Cascade:  true, CropModel: s.Crop.Name, CropModelVersion: s.Crop.Version,
	}
	for _, w := range wins {
		out.Windows = append(out.Windows, &lungsegv1.CropWindow{Y0: int32(w.Y0), X0: int32(w.X0),
			Height: int32(w.H), Width: int32(w.W)})
	}
	return out, nil
}
