// Package segment runs a model on each prepared slice: it consumes
// lung.ready.<model> with one durable consumer per model, so every model
// sees every slice and the workers of one model share the work, and
// publishes probability maps on lung.masks.<model>. The ONNX Runtime
// session lives in segment/infer.
//
// A detector m runs once per slice whatever the selection: when its
// cascade "m+crop" is selected (an input for "m+crop", or for "m" with
// refine set), m's output carries the slice's native HU and the refine
// flag, and the refine stage (segment/refine) consumes it on
// lung.masks.m, runs the crop model and publishes "m+crop".
//
// A crop model selected on its own gets a slice that fits in its window
// padded to it, with the placement, which score cuts out again; a larger
// slice arrives as native HU and the crop model runs over it in
// overlapping windows (Tile).
package segment

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/segment/cascade"
	"github.com/lungseg/lungseg/segment/verify"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Model runs a batch of n single-channel images (n×H×W float32) and
// returns probabilities in the same layout.
type Model interface {
	Run(input []float32, n int) ([]float32, error)
	Provider() string
}

// FixedBatcher is implemented by a Model whose input has a fixed batch
// size (infer.Session); 0 means any batch.
type FixedBatcher interface {
	FixedBatch() int
}

// PixelSource fetches pixels kept in the object store.
type PixelSource interface {
	GetBytes(ctx context.Context, name string, opts ...jetstream.GetObjectOpt) ([]byte, error)
}

// Stage is the segment processor of one model. Safe for concurrent use
// when its Models are.
type Stage struct {
	Card  *model.Card
	Model Model
	// Objects fetches a crop model's native HU when preprocess sent a
	// reference to the object store instead of the pixels.
	Objects PixelSource
	// Verifier, when set and the card has a verifier section, judges the
	// components of a crop model's map on a slice larger than its window
	// (segment/verify).
	Verifier verify.Classifier
}

// maxOutput is the largest ModelOutput published; one over the message
// limit (the 2 MiB mask and lung field of a 4096² slice) goes by object
// reference (stage.Publish, package objref).
const maxOutput = objref.MaxObject

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
	if c.IsCrop() && in.Placement == nil {
		// A crop model on a slice larger than its window (processTiled).
		return s.processTiled(ctx, &in, e)
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
	cascadeOnly := model.IsCascade(in.Model)
	refine := cascadeOnly || in.Refine
	if refine {
		// Check the pixels refine needs before spending inference.
		if err := CheckNative(&in); err != nil {
			return err
		}
	}
	start := time.Now()
	prob, err := Predict(s.Model, x, h, w, in.Tta)
	if err != nil {
		return fmt.Errorf("segment: running %s on %s: %w", c.Name, in.Meta.Id, err)
	}
	out := s.output(&in, prob, h, w)
	out.Placement = in.Placement
	out.InferenceUs = time.Since(start).Microseconds()
	if refine {
		// The detector's output goes on to refine, which publishes the
		// cascade; a cascade selected alone is the detector's run, left
		// unscored.
		out.Refine, out.NativeHu, out.NativeHuRef = true, in.NativeHu, in.NativeHuRef
		if cascadeOnly {
			out.Model, out.RefineOnly = c.Name, true
		}
	}
	return s.emit(ctx, e, out)
}

// CheckNative checks, without fetching anything, that a cascade input
// carries native HU of its slice's size (inline, or an object reference
// of that size): a permanent error if not.
func CheckNative(in *lungsegv1.ModelInput) error {
	rows, cols := int(in.Meta.Rows), int(in.Meta.Cols)
	if err := imgx.CheckSize(rows, cols); err != nil {
		return stage.Permanentf("segment: slice %s: %w", in.Meta.Id, err)
	}
	want := 2 * int64(rows) * int64(cols)
	switch {
	case len(in.NativeHu) > 0:
		if int64(len(in.NativeHu)) != want {
			return stage.Permanentf("segment: slice %s: native HU of %d bytes for %d×%d int16", in.Meta.Id, len(in.NativeHu), rows, cols)
		}
	case in.NativeHuRef != nil:
		if in.NativeHuRef.Size != want {
			return stage.Permanentf("segment: slice %s: object of %d bytes for %d×%d int16", in.Meta.Id, in.NativeHuRef.Size, rows, cols)
		}
	default:
		return stage.Permanentf("segment: slice %s: input %s without native HU", in.Meta.Id, in.Model)
	}
	return nil
}

// output is the model output of an input with its probability map (h×w):
// the input's slice, ground truth and lung field passed on, the card's
// threshold.
func (s *Stage) output(in *lungsegv1.ModelInput, prob []float32, h, w int) *lungsegv1.ModelOutput {
	c := s.Card
	return &lungsegv1.ModelOutput{
		Meta: in.Meta, Model: in.Model, ModelVersion: c.Version,
		Height: int32(h), Width: int32(w), Prob: imgx.EncodeFloat32(prob),
		Threshold: float32(c.Threshold), MaskBits: in.MaskBits, HasMask: in.HasMask,
		FieldBits: in.FieldBits, HasField: in.HasField,
		Provider: s.Model.Provider(),
	}
}

// emit publishes an output on lung.masks.<model>, refusing one over
// maxOutput.
func (s *Stage) emit(ctx context.Context, e stage.Emitter, out *lungsegv1.ModelOutput) error {
	b, err := proto.Marshal(out)
	if err != nil {
		return err
	}
	if len(b) > maxOutput {
		return stage.Permanentf("segment: slice %s: output of %s is %d bytes, over the %d-byte object limit", out.Meta.Id, out.Model, len(b), maxOutput)
	}
	return e.Emit(ctx, stage.Out{Subject: bus.MasksSubject(s.Card.Name), Data: b,
		SliceID: out.Meta.Id, ReplayID: out.Meta.ReplayId, Model: out.Model})
}

// nativeHU decodes the native HU of a crop model's input larger than its
// window (NativeHU).
func (s *Stage) nativeHU(ctx context.Context, in *lungsegv1.ModelInput) (*imgx.HU, error) {
	return NativeHU(ctx, s.Objects, in.Meta, in.NativeHu, in.NativeHuRef, in.Model)
}

// NativeHU decodes a slice's native HU (meta's rows×cols little-endian
// int16), given inline (px) or by reference (ref) to the object store,
// which it then fetches from objects and checks against the reference's
// size and sha256; sel names the selection in errors. Bad or missing
// pixels are permanent errors; a failed fetch is retried. Safe for
// concurrent use when objects is.
func NativeHU(ctx context.Context, objects PixelSource, meta *lungsegv1.SliceMeta, px []byte, ref *lungsegv1.ObjectRef, sel string) (*imgx.HU, error) {
	rows, cols := int(meta.Rows), int(meta.Cols)
	if err := imgx.CheckSize(rows, cols); err != nil {
		return nil, stage.Permanentf("segment: slice %s: %w", meta.Id, err)
	}
	if len(px) == 0 && ref != nil {
		if objects == nil {
			return nil, stage.Permanentf("segment: slice %s: native pixels are in the object store, which this worker has not got", meta.Id)
		}
		if want := 2 * int64(rows) * int64(cols); ref.Size != want {
			return nil, stage.Permanentf("segment: slice %s: object of %d bytes for %d×%d int16", meta.Id, ref.Size, rows, cols)
		}
		b, err := objects.GetBytes(ctx, ref.Key)
		if err != nil {
			return nil, fmt.Errorf("segment: slice %s: fetching native pixels %s: %w", meta.Id, ref.Key, err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != ref.Sha256 {
			return nil, stage.Permanentf("segment: slice %s: native pixels %s fail their sha256", meta.Id, ref.Key)
		}
		px = b
	}
	if len(px) == 0 {
		return nil, stage.Permanentf("segment: slice %s: input %s without native HU", meta.Id, sel)
	}
	hu, err := imgx.DecodeHU(rows, cols, px)
	if err != nil {
		return nil, stage.Permanentf("segment: slice %s: native HU: %w", meta.Id, err)
	}
	return hu, nil
}

// RunWindows runs a crop model on windows of a slice: all in one Run when
// the model's batch axis is dynamic, else in batches of its fixed size
// (the last padded with air windows). It returns one probability window
// per window.
func RunWindows(m Model, crop *model.Card, hu *imgx.HU, wins []cascade.Window) ([][]float32, error) {
	if len(wins) == 0 {
		return nil, nil
	}
	px := crop.Input.Height * crop.Input.Width
	in := make([]float32, 0, len(wins)*px)
	for _, w := range wins {
		if w.H != crop.Input.Height || w.W != crop.Input.Width {
			return nil, fmt.Errorf("%w: %d×%d window for a %d×%d model", cascade.ErrWindow, w.H, w.W, crop.Input.Height, crop.Input.Width)
		}
		in = append(in, cascade.Crop(hu, w, crop.Normalisation)...)
	}
	chunk := len(wins)
	if f, ok := m.(FixedBatcher); ok && f.FixedBatch() > 0 {
		chunk = f.FixedBatch()
	}
	out := make([][]float32, 0, len(wins))
	for k := 0; k < len(wins); k += chunk {
		n := min(chunk, len(wins)-k)
		batch := in[k*px : (k+n)*px]
		if n < chunk {
			padded := make([]float32, chunk*px)
			copy(padded, batch)
			air := crop.Normalisation.Apply(cascade.OutsideHU)
			for i := len(batch); i < len(padded); i++ {
				padded[i] = air
			}
			batch = padded
		}
		res, err := m.Run(batch, chunk)
		if err != nil {
			return nil, err
		}
		if len(res) != chunk*px {
			return nil, fmt.Errorf("%w: model returned %d values for %d windows", cascade.ErrWindow, len(res), chunk)
		}
		for j := 0; j < n; j++ {
			out = append(out, res[j*px:(j+1)*px:(j+1)*px])
		}
	}
	return out, nil
}
