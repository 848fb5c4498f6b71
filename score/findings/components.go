// Package findings turns predicted masks into nodule findings: the
// 8-connected components of each slice's mask with their area, longest
// in-plane diameter, centroid, mean HU and mean probability; nodules made
// of components that overlap on adjacent slices of one series, with their
// longest diameter, volume and slice range; and a size-based Lung-RADS
// category estimate. Its Processor is a pipeline stage that publishes
// findings on lung.findings.<category>.<model>.<replay> and alerts for
// categories at or above a threshold on lung.alerts.<category>.<model>.<replay>.
package findings

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// Errors.
var (
	ErrNoMeta     = errors.New("findings: slice without metadata")
	ErrShape      = errors.New("findings: image sizes disagree")
	ErrBadConfig  = errors.New("findings: bad configuration")
	ErrNoSlices   = errors.New("findings: no slices to group")
	ErrBadMessage = errors.New("findings: undecodable message")
)

// Config tunes the analysis. Zero fields take the defaults in
// DefaultConfig.
type Config struct {
	// MinSizePx drops components smaller than this many pixels.
	MinSizePx int
	// DefaultSpacingMm is the pixel spacing used where a slice carries
	// none; findings made with it are marked spacing_assumed.
	DefaultSpacingMm float64
	// DefaultThicknessMm is the slice thickness used for volumes where the
	// series gives none (a single slice, or no series); marked
	// thickness_assumed.
	DefaultThicknessMm float64
	// QuietPeriod is how long a series must go without a new slice to
	// count as complete (as Orthanc's StableAge).
	QuietPeriod time.Duration
	// AlertAt is the lowest category that raises an alert.
	AlertAt string
	// StateBucket is the key-value bucket that holds the slices of
	// incomplete series.
	StateBucket string
}

// DefaultConfig holds the defaults.
var DefaultConfig = Config{
	MinSizePx:          5,
	DefaultSpacingMm:   0.7,
	DefaultThicknessMm: 1.25,
	QuietPeriod:        60 * time.Second,
	AlertAt:            LR4A,
	StateBucket:        "lungseg-findings",
}

// WithDefaults returns c with zero fields set to the defaults.
func (c Config) WithDefaults() Config {
	d := DefaultConfig
	if c.MinSizePx <= 0 {
		c.MinSizePx = d.MinSizePx
	}
	if c.DefaultSpacingMm <= 0 {
		c.DefaultSpacingMm = d.DefaultSpacingMm
	}
	if c.DefaultThicknessMm <= 0 {
		c.DefaultThicknessMm = d.DefaultThicknessMm
	}
	if c.QuietPeriod <= 0 {
		c.QuietPeriod = d.QuietPeriod
	}
	if c.AlertAt == "" {
		c.AlertAt = d.AlertAt
	}
	if c.StateBucket == "" {
		c.StateBucket = d.StateBucket
	}
	return c
}

// Validate checks the configuration (after WithDefaults).
func (c Config) Validate() error {
	if Rank(c.AlertAt) == 0 {
		return fmt.Errorf("%w: alert category %q: want one of %v", ErrBadConfig, c.AlertAt, Categories)
	}
	return nil
}

// SliceInput is one predicted mask with what is known about its slice.
type SliceInput struct {
	Meta                *lungsegv1.SliceMeta
	Model, ModelVersion string
	Pred                *imgx.Mask
	// Prob is the probability map at the mask's size (optional).
	Prob []float32
	// HU is the slice in Hounsfield units (optional).
	HU *imgx.HU
}

// Spacing returns the pixel spacing of a slice in mm (rows, columns) and
// whether it is assumed: the slice says so, or it has none and the
// default is used.
func (c Config) Spacing(meta *lungsegv1.SliceMeta) (sr, sc float64, assumed bool) {
	sr, sc, assumed = meta.GetSpacingRowMm(), meta.GetSpacingColMm(), meta.GetSpacingAssumed()
	if sr <= 0 || sc <= 0 || math.IsNaN(sr) || math.IsNaN(sc) || math.IsInf(sr, 0) || math.IsInf(sc, 0) {
		d := c.WithDefaults().DefaultSpacingMm
		return d, d, true
	}
	return sr, sc, assumed
}

// Analyze measures the components of one predicted mask.
func (c Config) Analyze(in SliceInput) (*lungsegv1.SliceFindings, error) {
	c = c.WithDefaults()
	if in.Meta == nil {
		return nil, ErrNoMeta
	}
	if in.Pred == nil || len(in.Pred.Pix) != in.Pred.Rows*in.Pred.Cols {
		return nil, fmt.Errorf("%w: slice %s: no usable mask", ErrShape, in.Meta.Id)
	}
	rows, cols := in.Pred.Rows, in.Pred.Cols
	if in.Prob != nil && len(in.Prob) != rows*cols {
		return nil, fmt.Errorf("%w: slice %s: %d probabilities for a %d×%d mask", ErrShape, in.Meta.Id, len(in.Prob), rows, cols)
	}
	hu := in.HU
	if hu != nil && (hu.Rows != rows || hu.Cols != cols || len(hu.Pix) != rows*cols) {
		return nil, fmt.Errorf("%w: slice %s: HU image %d×%d for a %d×%d mask", ErrShape, in.Meta.Id, hu.Rows, hu.Cols, rows, cols)
	}
	lab, n := imgx.Labels(in.Pred, c.MinSizePx)
	comps := c.measure(in.Meta, lab, rows, cols, n, in.Prob, hu)
	sf := &lungsegv1.SliceFindings{Meta: in.Meta, Model: in.Model, ModelVersion: in.ModelVersion,
		Components: comps, CategoryBasis: CategoryBasis}
	best := -1.0
	for _, k := range comps {
		if k.DiameterMm > best {
			best, sf.Category = k.DiameterMm, k.Category
		}
	}
	return sf, nil
}

type acc struct {
	n                  int64
	sr, sc, shu, sprob float64
	minR, minC         int
	maxR, maxC         int
	edge               [][2]float64 // boundary pixel centres in mm
}

// measure computes the statistics of components 1..n of a label image.
func (c Config) measure(meta *lungsegv1.SliceMeta, lab []int32, rows, cols, n int, prob []float32, hu *imgx.HU) []*lungsegv1.Component {
	if n == 0 {
		return nil
	}
	sr, sc, _ := c.Spacing(meta)
	as := make([]acc, n+1)
	for i := range as {
		as[i].minR, as[i].minC = rows, cols
		as[i].maxR, as[i].maxC = -1, -1
	}
	inside := func(r, cc int, l int32) bool {
		return r >= 0 && r < rows && cc >= 0 && cc < cols && lab[r*cols+cc] == l
	}
	for p, l := range lab {
		if l == 0 {
			continue
		}
		a := &as[l]
		r, cc := p/cols, p%cols
		a.n++
		a.sr += float64(r)
		a.sc += float64(cc)
		if prob != nil {
			a.sprob += float64(prob[p])
		}
		if hu != nil {
			a.shu += float64(hu.Pix[p])
		}
		a.minR, a.minC = min(a.minR, r), min(a.minC, cc)
		a.maxR, a.maxC = max(a.maxR, r), max(a.maxC, cc)
		if !inside(r-1, cc, l) || !inside(r+1, cc, l) || !inside(r, cc-1, l) || !inside(r, cc+1, l) {
			a.edge = append(a.edge, [2]float64{float64(r) * sr, float64(cc) * sc})
		}
	}
	out := make([]*lungsegv1.Component, 0, n)
	for l := 1; l <= n; l++ {
		a := &as[l]
		d := imgx.Feret(a.edge) + 0.5*math.Sqrt(sr*sc)
		d = math.Max(d, math.Sqrt(sr*sc))
		k := &lungsegv1.Component{
			SliceId: meta.Id, InstanceUid: meta.InstanceUid, SlicePosition: meta.SlicePosition,
			Index: int32(l), AreaPx: a.n, AreaMm2: float64(a.n) * sr * sc, DiameterMm: d,
			CentroidRow: a.sr / float64(a.n), CentroidCol: a.sc / float64(a.n),
			MinRow: int32(a.minR), MinCol: int32(a.minC), MaxRow: int32(a.maxR), MaxCol: int32(a.maxC),
			Category: Category(d),
		}
		if hu != nil {
			k.MeanHu, k.HuKnown = a.shu/float64(a.n), true
		}
		if prob != nil {
			k.MeanProb, k.ProbKnown = a.sprob/float64(a.n), true
		}
		out = append(out, k)
	}
	return out
}
