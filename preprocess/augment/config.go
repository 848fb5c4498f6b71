package augment

import (
	"fmt"
	"math"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// Step configures one pipeline step. Op is one of "resize" (Rows, Cols),
// "rotate" (MaxDeg), "flip" (H, V probabilities), "elastic" (Alpha,
// Sigma), "intensity" (Brightness, Contrast) and "window"; other fields
// are ignored.
type Step struct {
	Op         string  `json:"op"`
	Rows       int     `json:"rows,omitempty"`
	Cols       int     `json:"cols,omitempty"`
	MaxDeg     float64 `json:"max_deg,omitempty"`
	H          float64 `json:"h,omitempty"`
	V          float64 `json:"v,omitempty"`
	Alpha      float64 `json:"alpha,omitempty"`
	Sigma      float64 `json:"sigma,omitempty"`
	Brightness float64 `json:"brightness,omitempty"`
	Contrast   float64 `json:"contrast,omitempty"`
}

// Config is an ordered list of steps on HU images and the HU window the
// intensity and window steps use.
type Config struct {
	Window Window `json:"window"`
	Steps  []Step `json:"steps"`
}

// Default elastic parameters, in pixels of the image the step sees (the
// 256×256 model input when the resize comes first): the field's standard
// deviation is about Alpha/(σ·sqrt(12π)) ≈ 3.3 px, smooth over about σ.
const (
	DefaultAlpha = 200
	DefaultSigma = 10
)

// Default returns the training augmentation: resize to size×size (none
// when size is 0), rotation within ±30°, flips each with probability 0.5,
// elastic deformation (DefaultAlpha, DefaultSigma), and brightness ±0.1 and
// contrast ×(1±0.1) in window w. The output stays in HU.
//
// The resize comes first so that the elastic parameters are in pixels of
// the model input whatever the source resolution (LIDC crops are ~44 px,
// full slices 512 px), and so the augmented copies of a slice share the
// resampling of its copy 0.
func Default(size int, w Window) Config {
	var steps []Step
	if size > 0 {
		steps = append(steps, Step{Op: "resize", Rows: size, Cols: size})
	}
	steps = append(steps,
		Step{Op: "rotate", MaxDeg: 30},
		Step{Op: "flip", H: 0.5, V: 0.5},
		Step{Op: "elastic", Alpha: DefaultAlpha, Sigma: DefaultSigma},
		Step{Op: "intensity", Brightness: 0.1, Contrast: 0.1},
	)
	return Config{Window: w, Steps: steps}
}

func finite(vs ...float64) bool {
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// New builds the pipeline a Config describes. Geometric steps fill with
// AirHU before a window step and with the window's value of AirHU after
// it; intensity steps use the window before a window step and work
// directly on [0,1] after it.
func New(c Config) (*Pipeline, error) {
	if err := c.Window.validate(); err != nil {
		return nil, err
	}
	pl := &Pipeline{}
	windowed := false
	fill := float32(AirHU)
	for i, s := range c.Steps {
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%w: step %d (%s): %s", ErrConfig, i+1, s.Op, fmt.Sprintf(format, a...))
		}
		var t Transform
		switch s.Op {
		case "resize":
			if err := imgx.CheckSize(s.Rows, s.Cols); err != nil {
				return nil, bad("%v", err)
			}
			t = Resize{Rows: s.Rows, Cols: s.Cols}
		case "rotate":
			if !finite(s.MaxDeg) || s.MaxDeg < 0 || s.MaxDeg > 180 {
				return nil, bad("max_deg %g not in [0,180]", s.MaxDeg)
			}
			t = Rotate{MaxDeg: s.MaxDeg, Fill: fill}
		case "flip":
			if !finite(s.H, s.V) || s.H < 0 || s.H > 1 || s.V < 0 || s.V > 1 {
				return nil, bad("probabilities h=%g v=%g not in [0,1]", s.H, s.V)
			}
			t = Flip{H: s.H, V: s.V}
		case "elastic":
			if !finite(s.Alpha, s.Sigma) || s.Alpha < 0 || s.Sigma < 0 || s.Sigma > 100 {
				return nil, bad("alpha %g must be ≥ 0 and sigma %g in [0,100]", s.Alpha, s.Sigma)
			}
			if s.Alpha > 0 && s.Sigma == 0 {
				return nil, bad("alpha %g needs a positive sigma (unsmoothed noise)", s.Alpha)
			}
			t = Elastic{Alpha: s.Alpha, Sigma: s.Sigma, Fill: fill}
		case "intensity":
			if !finite(s.Brightness, s.Contrast) || s.Brightness < 0 || s.Brightness > 1 || s.Contrast < 0 || s.Contrast >= 1 {
				return nil, bad("brightness %g must be in [0,1] and contrast %g in [0,1)", s.Brightness, s.Contrast)
			}
			it := Intensity{Brightness: s.Brightness, Contrast: s.Contrast}
			if !windowed {
				w := c.Window
				it.Window = &w
			}
			t = it
		case "window":
			if windowed {
				return nil, bad("a second window step")
			}
			windowed = true
			fill = c.Window.Value(AirHU)
			t = ToWindow{Window: c.Window}
		default:
			return nil, bad("unknown op (want resize, rotate, flip, elastic, intensity or window)")
		}
		pl.Steps = append(pl.Steps, t)
	}
	return pl, nil
}
