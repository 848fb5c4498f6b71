package score

import (
	"fmt"

	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// placed maps the output of a crop model run on a slice padded to its
// window (o.Placement set): the slice's rows×cols are cut out of the
// probability map (o.Height×o.Width, decoded in small) at the placement,
// with no resizing, and thresholded at the output's threshold (>=, as for
// whole-slice models).
func placed(o *lungsegv1.ModelOutput, small []float32) ([]float32, *imgx.Mask, error) {
	p := o.Placement
	rows, cols := int(o.Meta.Rows), int(o.Meta.Cols)
	if o.Cascade {
		return nil, nil, fmt.Errorf("score: slice %s: a cascade output with a placement", o.Meta.Id)
	}
	if int(p.Height) != rows || int(p.Width) != cols {
		return nil, nil, fmt.Errorf("score: slice %s: placement %d×%d for a %d×%d slice", o.Meta.Id, p.Height, p.Width, rows, cols)
	}
	r := imgx.Region{Y0: int(p.Y0), X0: int(p.X0), H: rows, W: cols}
	full, err := imgx.Cut(small, int(o.Height), int(o.Width), r)
	if err != nil {
		return nil, nil, fmt.Errorf("score: slice %s: placement: %w", o.Meta.Id, err)
	}
	return full, Threshold(full, rows, cols, float64(o.Threshold)), nil
}
