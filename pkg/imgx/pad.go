package imgx

import "fmt"

// Region is a rectangle on a pixel grid: top-left (Y0, X0) and size H×W.
type Region struct {
	Y0, X0, H, W int
}

// Centre returns where an h×w image lies when it is centred on a
// height×width grid it fits in: Y0 = (height−h)/2, X0 = (width−w)/2 in
// integer division. It is the placement of a slice padded to a crop
// model's window (the training code pads the same way).
func Centre(h, w, height, width int) (Region, error) {
	if h < 1 || w < 1 || h > height || w > width {
		return Region{}, fmt.Errorf("imgx: %d×%d does not fit in %d×%d", h, w, height, width)
	}
	return Region{Y0: (height - h) / 2, X0: (width - w) / 2, H: h, W: w}, nil
}

// AirHU is what an image reads outside its edges: air. A crop model's
// window reaching past a slice (a cascade's window, a bare crop padded to
// the window) is filled with it.
const AirHU = -1024

// Pad returns src (h×w, row-major) padded to (top+h+bottom)×
// (left+w+right) with fill, exactly as numpy's np.pad(src, ((top,
// bottom), (left, right)), mode="constant", constant_values=fill).
func Pad[T any](src []T, h, w, top, bottom, left, right int, fill T) ([]T, error) {
	if h < 1 || w < 1 || len(src) != h*w || top < 0 || bottom < 0 || left < 0 || right < 0 {
		return nil, fmt.Errorf("imgx: padding %d values as %d×%d by %d,%d,%d,%d", len(src), h, w, top, bottom, left, right)
	}
	oh, ow := top+h+bottom, left+w+right
	if err := CheckSize(oh, ow); err != nil {
		return nil, err
	}
	out := make([]T, oh*ow)
	for i := range out {
		out[i] = fill
	}
	for y := 0; y < h; y++ {
		copy(out[(top+y)*ow+left:], src[y*w:(y+1)*w])
	}
	return out, nil
}

// PadCentre pads an h×w image to height×width with fill (Pad), placing it
// at Centre(h, w, height, width), which it returns. The crop models'
// training pads bare crops the same way (train/'s data.pad_bare_crop, with
// AirHU).
func PadCentre[T any](src []T, h, w, height, width int, fill T) ([]T, Region, error) {
	r, err := Centre(h, w, height, width)
	if err != nil {
		return nil, Region{}, err
	}
	out, err := Pad(src, h, w, r.Y0, height-h-r.Y0, r.X0, width-w-r.X0, fill)
	return out, r, err
}

// Cut returns the r.H×r.W rectangle r of a rows×cols image.
func Cut[T any](src []T, rows, cols int, r Region) ([]T, error) {
	if len(src) != rows*cols || r.H < 1 || r.W < 1 || r.Y0 < 0 || r.X0 < 0 || r.Y0+r.H > rows || r.X0+r.W > cols {
		return nil, fmt.Errorf("imgx: region %d×%d at (%d,%d) outside a %d×%d image of %d values", r.H, r.W, r.Y0, r.X0, rows, cols, len(src))
	}
	out := make([]T, 0, r.H*r.W)
	for y := r.Y0; y < r.Y0+r.H; y++ {
		out = append(out, src[y*cols+r.X0:y*cols+r.X0+r.W]...)
	}
	return out, nil
}
