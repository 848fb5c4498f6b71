// Package preprocess turns CT slices in HU into model input: the HU window
// of the model's card, resized to the model's input size. One slice yields
// one ModelInput per model it is meant for, on lung.ready.<model>; the
// original geometry and ground truth travel along so score can map the
// result back to the original grid.
package preprocess

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/preprocess/augment"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
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
	// TrainCopies > 0 publishes, for every slice with ground truth and
	// every model it names, copy 0 (windowed and resized) and TrainCopies
	// augmented copies on lung.train.<model>, so that a training set can
	// be streamed. TrainSeed makes the copies reproducible.
	TrainCopies int
	TrainSeed   uint64
	// Objects holds pixels of slices too large for one message.
	Objects jetstream.ObjectStore
	// NoLungField leaves the lung field (pkg/lungfield) off the inputs, so
	// that nothing downstream is removed; for measuring what it changes.
	NoLungField bool

	pipelines sync.Map // model name → *augment.Pipeline
}

// PixelSource fetches pixels kept in the object store.
type PixelSource interface {
	GetBytes(ctx context.Context, name string, opts ...jetstream.GetObjectOpt) ([]byte, error)
}

// errFetch marks a failure to fetch pixels, which is worth retrying.
type errFetch struct{ error }

func (e errFetch) Unwrap() error { return e.error }

// DecodeSlice decodes and validates a raw slice, fetching its pixels from
// objects when the message carries a reference (objects may be nil when
// none is configured).
func DecodeSlice(ctx context.Context, b []byte, objects PixelSource) (*lungsegv1.Slice, *imgx.HU, *imgx.Mask, error) {
	var s lungsegv1.Slice
	if err := proto.Unmarshal(b, &s); err != nil {
		return nil, nil, nil, fmt.Errorf("preprocess: decoding slice: %w", err)
	}
	if s.Meta == nil {
		return nil, nil, nil, errors.New("preprocess: slice without metadata")
	}
	if s.HuRef != nil && len(s.Hu) == 0 {
		if objects == nil {
			return nil, nil, nil, fmt.Errorf("preprocess: slice %s: pixels are in the object store, which this worker has not got", s.Meta.Id)
		}
		if want := 2 * int64(s.Meta.Rows) * int64(s.Meta.Cols); s.HuRef.Size != want {
			return nil, nil, nil, fmt.Errorf("preprocess: slice %s: object of %d bytes for %d×%d int16", s.Meta.Id, s.HuRef.Size, s.Meta.Rows, s.Meta.Cols)
		}
		px, err := objects.GetBytes(ctx, s.HuRef.Key)
		if err != nil {
			return nil, nil, nil, errFetch{fmt.Errorf("preprocess: slice %s: fetching pixels %s: %w", s.Meta.Id, s.HuRef.Key, err)}
		}
		if sum := sha256.Sum256(px); hex.EncodeToString(sum[:]) != s.HuRef.Sha256 {
			return nil, nil, nil, fmt.Errorf("preprocess: slice %s: pixels %s fail their sha256", s.Meta.Id, s.HuRef.Key)
		}
		s.Hu = px
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
	var objects PixelSource
	if p.Objects != nil {
		objects = p.Objects
	}
	s, hu, mask, err := DecodeSlice(ctx, m.Data, objects)
	var fe errFetch
	if errors.As(err, &fe) {
		return err // transient: retried with backoff
	}
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
	fieldBits, hasField := p.field(s.Meta, hu)
	selected := make(map[string]bool, len(models))
	for _, name := range models {
		selected[name] = true
	}
	var unserved error // the first model without a consumer on READY
	for _, name := range models {
		base, tta := model.SplitVariant(name)
		card, err := p.Cards.Get(base)
		if err != nil {
			if ferr := e.Fail(ctx, stage.Failure{SliceID: s.Meta.Id, ReplayID: s.Meta.ReplayId, Model: name, Err: err}); ferr != nil {
				return ferr
			}
			continue
		}
		cascade := model.IsCascade(name)
		if cascade && selected[base] {
			// The cascade rides on its detector's input (refine below):
			// segment runs the detector once for both.
			continue
		}
		refine := !cascade && !tta && !card.IsCrop() && selected[name+model.CropSuffix]
		in := &lungsegv1.ModelInput{
			Meta:         s.Meta,
			Model:        name,
			ModelVersion: card.Version,
			Channels:     1,
			Height:       int32(card.Input.Height),
			Width:        int32(card.Input.Width),
			MaskBits:     s.MaskBits,
			HasMask:      s.HasMask,
			Tta:          tta || p.TTA || card.TTA,
			FieldBits:    fieldBits,
			HasField:     hasField,
			Refine:       refine,
		}
		if !card.IsCrop() {
			in.Tensor = imgx.EncodeFloat32(Input(hu, card))
		}
		if refine {
			// The detector goes on without its cascade when the native HU
			// cannot travel: the cascade alone fails.
			if err := p.attachNative(ctx, in, s); err != nil {
				if !stage.IsPermanent(err) {
					return err
				}
				in.Refine, in.NativeHu, in.NativeHuRef = false, nil, nil
				if ferr := e.Fail(ctx, stage.Failure{SliceID: s.Meta.Id, ReplayID: s.Meta.ReplayId, Model: name + model.CropSuffix, Err: err}); ferr != nil {
					return ferr
				}
			}
		}
		if card.IsCrop() || cascade {
			if err := p.attach(ctx, in, s, hu, card); err != nil {
				if stage.IsPermanent(err) {
					if ferr := e.Fail(ctx, stage.Failure{SliceID: s.Meta.Id, ReplayID: s.Meta.ReplayId, Model: name, Err: err}); ferr != nil {
						return ferr
					}
					continue
				}
				return err
			}
		}
		b, err := proto.Marshal(in)
		if err != nil {
			return err
		}
		if err := e.Emit(ctx, stage.Out{Subject: bus.ReadySubject(card.Name), Data: b,
			SliceID: s.Meta.Id, ReplayID: s.Meta.ReplayId, Model: name}); err != nil {
			if !errors.Is(err, bus.ErrNoConsumer) {
				return err
			}
			// No segment takes this model yet: the other models go on, and
			// this one is retried with the message (the others' inputs are
			// deduped then), or reported on the last delivery.
			if m.Last {
				if ferr := e.Fail(ctx, stage.Failure{SliceID: s.Meta.Id, ReplayID: s.Meta.ReplayId, Model: name, Err: err}); ferr != nil {
					return ferr
				}
			} else if unserved == nil {
				unserved = err
			}
			continue
		}
		if p.TrainCopies > 0 && mask != nil && !tta && !cascade && !card.IsCrop() {
			if err := p.emitTraining(ctx, e, s.Meta, card, hu, mask); err != nil {
				return err
			}
		}
	}
	return unserved
}

// field computes a slice's lung field once for all its inputs: the packed
// bits and true, or false when NoLungField is set or no field can be
// computed (a nodule crop, an image that is not HU), in which case
// nothing is removed downstream.
func (p *Stage) field(meta *lungsegv1.SliceMeta, hu *imgx.HU) ([]byte, bool) {
	if p.NoLungField {
		return nil, false
	}
	f, err := lungfield.Compute(hu, meta.SpacingRowMm, meta.SpacingColMm, lungfield.Options{})
	if err != nil {
		return nil, false
	}
	return f.PackBits(), true
}

// MaxInput is the largest ModelInput preprocess publishes, leaving room
// for headers under the payload limit.
const MaxInput = bus.MaxPayload - 16<<10

// attachNative gives a cascade's input (or a detector's with refine set),
// or a crop model's on a slice
// larger than its window, the slice's native HU, which the crop model
// reads: a reference when the slice's pixels are in the object store, else
// the pixels themselves; when those would push the input over MaxInput
// they are stored in the object store (key "native/<replay>/<id>") and
// referenced, or, without an object store, the input fails with a
// permanent error.
func (p *Stage) attachNative(ctx context.Context, in *lungsegv1.ModelInput, s *lungsegv1.Slice) error {
	if s.HuRef != nil {
		in.NativeHuRef = s.HuRef
		return nil
	}
	in.NativeHu = s.Hu
	if n := proto.Size(in); n <= MaxInput {
		return nil
	} else if p.Objects == nil {
		in.NativeHu = nil
		return stage.Permanentf("preprocess: slice %s: input for %s with native HU is %d bytes, over the %d-byte message limit, and no object store is configured",
			s.Meta.Id, in.Model, n, MaxInput)
	}
	key := "native/" + s.Meta.ReplayId + "/" + s.Meta.Id
	sum := sha256.Sum256(s.Hu)
	if _, err := p.Objects.PutBytes(ctx, key, s.Hu); err != nil {
		return fmt.Errorf("preprocess: slice %s: storing native pixels: %w", s.Meta.Id, err)
	}
	in.NativeHu = nil
	in.NativeHuRef = &lungsegv1.ObjectRef{Bucket: bus.PixelsBucket, Key: key, Sha256: hex.EncodeToString(sum[:]), Size: int64(len(s.Hu))}
	return nil
}

// augmentation returns the training pipeline of a model: its window, its
// input size, then the report's augmentations.
func (p *Stage) augmentation(card *model.Card) (*augment.Pipeline, error) {
	if v, ok := p.pipelines.Load(card.Name); ok {
		return v.(*augment.Pipeline), nil
	}
	w := augment.Window{Center: card.Normalisation.Center, Width: card.Normalisation.Width}
	pl, err := augment.New(augment.Config{Window: w, Steps: []augment.Step{
		{Op: "window"},
		{Op: "resize", Rows: card.Input.Height, Cols: card.Input.Width},
		{Op: "rotate", MaxDeg: 30},
		{Op: "flip", H: 0.5, V: 0.5},
		{Op: "elastic", Alpha: augment.DefaultAlpha, Sigma: augment.DefaultSigma},
		{Op: "intensity", Brightness: 0.1, Contrast: 0.1},
	}})
	if err != nil {
		return nil, err
	}
	v, _ := p.pipelines.LoadOrStore(card.Name, pl)
	return v.(*augment.Pipeline), nil
}

func (p *Stage) emitTraining(ctx context.Context, e stage.Emitter, meta *lungsegv1.SliceMeta, card *model.Card, hu *imgx.HU, mask *imgx.Mask) error {
	pl, err := p.augmentation(card)
	if err != nil {
		return err
	}
	h, w := card.Input.Height, card.Input.Width
	for k := 0; k <= p.TrainCopies; k++ {
		var tensor []float32
		var m *imgx.Mask
		params := "{}"
		if k == 0 {
			tensor, m = Input(hu, card), imgx.ResizeNearest(mask, h, w)
		} else {
			f, am, prm, err := pl.Apply(augment.FloatFromHU(hu), mask, augment.NewRand(p.TrainSeed, meta.ReplayId+"|"+meta.Id+"#"+strconv.Itoa(k)))
			if err != nil {
				return stage.Permanentf("preprocess: augmenting %s: %w", meta.Id, err)
			}
			tensor, m = f.Pix, am
			if b, err := json.Marshal(prm); err == nil {
				params = string(b)
			}
		}
		ex := &lungsegv1.TrainingExample{Meta: meta, Model: card.Name, Copy: int32(k), Height: int32(h), Width: int32(w),
			Tensor: imgx.EncodeFloat32(tensor), MaskBits: m.PackBits(), HasMask: true, ParamsJson: params}
		b, err := proto.Marshal(ex)
		if err != nil {
			return err
		}
		if err := e.Emit(ctx, stage.Out{Subject: bus.TrainSubject(card.Name), Data: b, SliceID: meta.Id, ReplayID: meta.ReplayId,
			Model: card.Name, MsgID: bus.MsgID(meta.ReplayId, meta.Id, "train-"+strconv.Itoa(k), card.Name)}); err != nil {
			return err
		}
	}
	return nil
}
