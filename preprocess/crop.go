package preprocess

import (
	"context"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// CropInput returns a crop model's input for a slice that fits in its
// window (rows ≤ Input.Height, cols ≤ Input.Width): the slice at its
// native pixel grid, centred on the window with air (imgx.AirHU) around it,
// as a cascade's window reads beyond an image and as the crop models'
// training pads bare crops, normalised as the card says; and where the
// slice lies on the window.
func CropInput(hu *imgx.HU, card *model.Card) ([]float32, imgx.Region, error) {
	pad, r, err := imgx.PadCentre(hu.Pix, hu.Rows, hu.Cols, card.Input.Height, card.Input.Width, imgx.AirHU)
	if err != nil {
		return nil, r, err
	}
	f := make([]float32, len(pad))
	for i, v := range pad {
		f[i] = card.Normalisation.Apply(float64(v))
	}
	return f, r, nil
}

// FitsWindow reports whether a slice goes to a crop model whole, padded to
// its window (CropInput); a larger one is covered by overlapping windows in
// segment.
func FitsWindow(rows, cols int, card *model.Card) bool {
	return rows <= card.Input.Height && cols <= card.Input.Width
}

// attach completes the input of a cascade (attachNative) or of a crop
// model selected on its own (cropInput).
func (p *Stage) attach(ctx context.Context, in *lungsegv1.ModelInput, s *lungsegv1.Slice, hu *imgx.HU, card *model.Card) error {
	if card.IsCrop() {
		return p.cropInput(ctx, in, s, hu, card)
	}
	return p.attachNative(ctx, in, s)
}

// cropInput fills the input of a crop model selected on its own: a slice
// that fits in the window is the padded window (CropInput) with its
// placement; a larger slice travels as native HU, as for a cascade
// (attachNative), and segment runs the model in overlapping windows at the
// native grid.
func (p *Stage) cropInput(ctx context.Context, in *lungsegv1.ModelInput, s *lungsegv1.Slice, hu *imgx.HU, card *model.Card) error {
	if !FitsWindow(hu.Rows, hu.Cols, card) {
		return p.attachNative(ctx, in, s)
	}
	x, r, err := CropInput(hu, card)
	if err != nil {
		return stage.Permanentf("preprocess: slice %s for %s: %w", s.Meta.Id, in.Model, err)
	}
	in.Tensor = imgx.EncodeFloat32(x)
	in.Placement = &lungsegv1.Region{Y0: int32(r.Y0), X0: int32(r.X0), Height: int32(r.H), Width: int32(r.W)}
	return nil
}
