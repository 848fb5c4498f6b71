package segment

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/segment/cascade"
	"github.com/lungseg/lungseg/segment/verify"
)

// TileStride is the step between the overlapping windows in which a crop
// model covers a slice larger than its window: half a 128-pixel window, so
// every pixel away from the slice's edge lies in the inner half of some
// window. The crop models were trained on nodules near the window's centre
// and miss many that sit near its edge: on the 24 real slices of test
// patient 0007 the shipped ResNet50 crop model scored a mean Dice of 0.14
// with stride 96 and a plain mean, 0.41 with stride 64 and the Gaussian
// weights of TileWeights (train/README.md, "Tiling").
const TileStride = 64

// TileSigma is the standard deviation of TileWeights' Gaussian as a
// fraction of the window's side (nnU-Net's sliding-window value).
const TileSigma = 1.0 / 8

// MaxTiledSide caps each side of the probability map published for a
// tiled slice: a larger native map is resized down to at most
// MaxTiledSide×MaxTiledSide (256² float32 is 256 KiB, well under the
// message limit), and score resizes it back to the slice's grid.
const MaxTiledSide = 256

// tileChunk is the most windows in one model call while tiling.
const tileChunk = 16

// TileOrigins returns where windows of size w start along an axis of n ≥ w
// pixels: 0, stride, 2·stride, … while the window fits, and n−w last, so
// the windows cover the axis.
func TileOrigins(n, w, stride int) []int {
	var o []int
	for p := 0; p+w < n; p += stride {
		o = append(o, p)
	}
	return append(o, n-w)
}

// TileWeights returns the h×w weights with which a window's probabilities
// are blended into a tiled map: a Gaussian centred on the window, standard
// deviation TileSigma of each side, 1 at the centre (about 3e-4 at the
// middle of an edge, never 0).
func TileWeights(h, w int) []float32 {
	axis := func(n int) []float64 {
		g := make([]float64, n)
		c, sd := float64(n-1)/2, float64(n)*TileSigma
		for i := range g {
			d := (float64(i) - c) / sd
			g[i] = math.Exp(-d * d / 2)
		}
		return g
	}
	gy, gx := axis(h), axis(w)
	out := make([]float32, h*w)
	for y, a := range gy {
		for x, b := range gx {
			out[y*w+x] = float32(a * b)
		}
	}
	return out
}

// Tile runs a crop model on a slice at its native pixel grid in
// overlapping windows and returns its probability map (rows×cols): the
// slice is first padded with air (imgx.PadCentre) to the window along any
// axis shorter than it, then covered by Input.Height×Input.Width windows
// at TileOrigins(…, stride) on each axis, each normalised as the card says
// and run (with flip TTA when tta is set, per window); where windows
// overlap their probabilities are averaged with the weights of
// TileWeights, so a pixel takes its value mostly from the windows it lies
// near the centre of; the padding is cut off again.
// A slice that fits in the window is one window, padded as preprocess pads
// it (CropInput), so both paths give the same map.
func Tile(m Model, card *model.Card, hu *imgx.HU, stride int, tta bool) ([]float32, error) {
	H, W := card.Input.Height, card.Input.Width
	if stride < 1 {
		return nil, fmt.Errorf("segment: tile stride %d", stride)
	}
	ph, pw := max(hu.Rows, H), max(hu.Cols, W)
	pad, r, err := imgx.PadCentre(hu.Pix, hu.Rows, hu.Cols, ph, pw, imgx.AirHU)
	if err != nil {
		return nil, err
	}
	padded := &imgx.HU{Rows: ph, Cols: pw, Pix: pad}
	var wins []cascade.Window
	for _, y := range TileOrigins(ph, H, stride) {
		for _, x := range TileOrigins(pw, W, stride) {
			wins = append(wins, cascade.Window{Y0: y, X0: x, H: H, W: W})
		}
	}
	weight := TileWeights(H, W)
	sum := make([]float32, ph*pw)
	total := make([]float32, ph*pw)
	for k := 0; k < len(wins); k += tileChunk {
		chunk := wins[k:min(k+tileChunk, len(wins))]
		var probs [][]float32
		if tta {
			for _, w := range chunk {
				p, err := Predict(m, cascade.Crop(padded, w, card.Normalisation), H, W, true)
				if err != nil {
					return nil, err
				}
				probs = append(probs, p)
			}
		} else if probs, err = RunWindows(m, card, padded, chunk); err != nil {
			return nil, err
		}
		for j, w := range chunk {
			if len(probs[j]) != H*W {
				return nil, fmt.Errorf("%w: model returned %d values for a %d×%d window", cascade.ErrWindow, len(probs[j]), H, W)
			}
			for y := 0; y < H; y++ {
				row := (w.Y0+y)*pw + w.X0
				wr := weight[y*W : (y+1)*W]
				for x, v := range probs[j][y*W : (y+1)*W] {
					sum[row+x] += wr[x] * v
					total[row+x] += wr[x]
				}
			}
		}
	}
	for i := range sum {
		sum[i] /= total[i]
	}
	return imgx.Cut(sum, ph, pw, r)
}

// processTiled serves a crop model's input without a placement: the slice
// did not fit in the window, so preprocess sent its native HU and the model
// runs over it in overlapping windows (Tile). The map is published at the
// native grid, or resized down to at most MaxTiledSide per side.
func (s *Stage) processTiled(ctx context.Context, in *lungsegv1.ModelInput, e stage.Emitter) error {
	c := s.Card
	hu, err := s.nativeHU(ctx, in)
	if err != nil {
		return err
	}
	start := time.Now()
	prob, err := Tile(s.Model, c, hu, TileStride, in.Tta)
	if err != nil {
		return fmt.Errorf("segment: running %s in windows over %s (%d×%d): %w", c.Name, in.Meta.Id, hu.Rows, hu.Cols, err)
	}
	if c.Verifier != nil && s.Verifier != nil {
		field, err := lungfield.FromBits(hu.Rows, hu.Cols, in.FieldBits, in.HasField)
		if err != nil {
			return stage.Permanentf("segment: slice %s: lung field: %w", in.Meta.Id, err)
		}
		if _, err := verify.Apply(s.Verifier, c.Verifier, hu, prob, float32(c.Threshold), field); err != nil {
			return fmt.Errorf("segment: verifying %s's components on %s: %w", c.Name, in.Meta.Id, err)
		}
	}
	h, w := min(hu.Rows, MaxTiledSide), min(hu.Cols, MaxTiledSide)
	prob = imgx.ResizeBilinear(prob, hu.Rows, hu.Cols, h, w)
	out := s.output(in, prob, h, w)
	out.InferenceUs = time.Since(start).Microseconds()
	return s.emit(ctx, e, out)
}
