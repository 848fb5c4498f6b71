// Package phantom generates synthetic chest CT slices in Hounsfield units
// with exact nodule masks, for demos and tests: air around a body ellipse
// (soft tissue with a fat rim and a vertebra), two lungs, vessels, and
// round solid nodules of known diameter with Gaussian noise on top.
//
// Generate is deterministic: the same seed and options give the same
// slices, bit for bit. In the default mode every slice is drawn
// independently (slice i depends only on the seed and i); in series mode
// the slices are consecutive sections of one volume in which nodules are
// spheres, so a nodule shows on several neighbouring slices with a
// diameter that grows and shrinks with z.
//
// Slices are written with WriteDICOM (a CT series plus PNG masks in a
// masks/ folder that dicomio.Read's masksDir reads), WritePNG (pngpair
// files) and WritePKL (a Mendeley-style pandas pickle via ingest/pickle).
package phantom

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
)

// Tissue values in HU.
const (
	HUAir        = -1000
	HUFat        = -100
	HUSoftTissue = 40
	HULung       = -850
	HUVessel     = 40
	HUBone       = 400
	HUNodule     = 30
	// HUMin and HUMax bound every pixel (a 12-bit CT range), so that the
	// slices survive the HU+1024 PNG encoding exactly.
	HUMin = -1024
	HUMax = 3071
)

// Lung-RADS size categories (solid nodules, by diameter).
const (
	LR2  = "LR2"  // < 6 mm
	LR3  = "LR3"  // 6 to < 8 mm
	LR4A = "LR4A" // 8 to < 15 mm
	LR4B = "LR4B" // >= 15 mm
)

// LungRADS returns the size category of a solid nodule of the given
// diameter: LR2 below 6 mm, LR3 below 8, LR4A below 15, LR4B from 15 on.
func LungRADS(diameterMm float64) string {
	switch {
	case diameterMm < 6:
		return LR2
	case diameterMm < 8:
		return LR3
	case diameterMm < 15:
		return LR4A
	}
	return LR4B
}

// Options control the generator. Zero values take the defaults given.
type Options struct {
	// Rows and Cols of each slice (default 512×512).
	Rows, Cols int
	// SpacingMm is the pixel spacing (default 0.7).
	SpacingMm float64
	// SliceSpacingMm is the distance between consecutive slices (default
	// 1.25); it sets PositionMm and, in series mode, the nodule sections.
	SliceSpacingMm float64
	// NoiseSigma is the standard deviation of the Gaussian noise in HU
	// (default 20; negative for none).
	NoiseSigma float64
	// EmptyFraction is the probability that an independent slice has no
	// nodule (default 0.25; negative for 0).
	EmptyFraction float64
	// MaxNodules is the most nodules per slice, or per volume in series
	// mode (default 2). There is at least one unless the slice is drawn
	// empty.
	MaxNodules int
	// MinDiameterMm and MaxDiameterMm bound nodule diameters (defaults 3
	// and 30). Diameters are drawn by picking a Lung-RADS category that
	// overlaps the range, then a diameter within it, so all categories
	// are about equally frequent. A nodule too large for a small lung is
	// made smaller.
	MinDiameterMm, MaxDiameterMm float64
	// IrregularFraction is the probability that a nodule has a lobulated
	// edge (default 0.3; negative for 0).
	IrregularFraction float64
	// Series generates consecutive sections of one volume with spherical
	// nodules instead of independent slices.
	Series bool
}

func (o Options) withDefaults() Options {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		} else if *v < 0 {
			*v = 0
		}
	}
	if o.Rows == 0 {
		o.Rows = 512
	}
	if o.Cols == 0 {
		o.Cols = 512
	}
	if o.SpacingMm <= 0 {
		o.SpacingMm = 0.7
	}
	if o.SliceSpacingMm <= 0 {
		o.SliceSpacingMm = 1.25
	}
	def(&o.NoiseSigma, 20)
	def(&o.EmptyFraction, 0.25)
	def(&o.IrregularFraction, 0.3)
	if o.MaxNodules <= 0 {
		o.MaxNodules = 2
	}
	if o.MinDiameterMm <= 0 {
		o.MinDiameterMm = 3
	}
	if o.MaxDiameterMm <= 0 {
		o.MaxDiameterMm = 30
	}
	if o.MaxDiameterMm < o.MinDiameterMm {
		o.MaxDiameterMm = o.MinDiameterMm
	}
	return o
}

// Nodule describes one nodule as it appears on a slice.
type Nodule struct {
	// ID numbers the nodules of a slice (independent mode) or of the
	// volume (series mode, where it is the same on every slice the nodule
	// crosses).
	ID int
	// Row and Col are the centre in pixels (sub-pixel).
	Row, Col float64
	// DiameterMm is the nodule's diameter (the sphere's in series mode).
	DiameterMm float64
	// SectionDiameterMm is the diameter of its cross-section on this
	// slice: DiameterMm for independent slices, smaller away from the
	// sphere's centre in series mode. The mask's area-equivalent diameter
	// matches it within one pixel spacing.
	SectionDiameterMm float64
	// Irregular is set for lobulated edges.
	Irregular bool
	// Pixels is the number of mask pixels of this nodule on this slice.
	Pixels int
}

// Slice is one generated CT slice.
type Slice struct {
	HU *imgx.HU
	// Mask holds exactly the nodule pixels.
	Mask *imgx.Mask
	// Lung holds the lung pixels (nodules included); HU×Lung is the
	// Mendeley dataset's hu_array.
	Lung      *imgx.Mask
	SpacingMm float64
	Nodules   []Nodule
	// Label is the Lung-RADS category of the largest nodule (LungRADS of
	// its DiameterMm), "" when the slice has none.
	Label string
	// Index is the slice's 0-based number in its Generate call, and
	// PositionMm its position along z (Index × SliceSpacingMm).
	Index      int
	PositionMm float64
	// Seed is the seed given to Generate.
	Seed int64
	// StudyUID, SeriesUID and InstanceUID are derived from the seed and
	// the options; all slices of one Generate call share a series.
	StudyUID, SeriesUID, InstanceUID string
}

// Name returns the file name stem of a slice: "slice0001" for Index 0.
func (s *Slice) Name() string { return fmt.Sprintf("slice%04d", s.Index+1) }

// Generate returns n slices for the seed.
func Generate(seed int64, n int, opts Options) []Slice {
	o := opts.withDefaults()
	study := dicomwrite.NewUID("lungseg-phantom", fmt.Sprint(seed), "study")
	series := dicomwrite.NewUID("lungseg-phantom", fmt.Sprint(seed), fmt.Sprintf("%+v", o), "series")
	out := make([]Slice, n)
	var vol *volume
	if o.Series {
		vol = newVolume(rng(seed, -1), o, n)
	}
	for i := range out {
		s := &out[i]
		s.Index, s.Seed, s.SpacingMm = i, seed, o.SpacingMm
		s.PositionMm = float64(i) * o.SliceSpacingMm
		s.StudyUID, s.SeriesUID = study, series
		s.InstanceUID = dicomwrite.NewUID(series, "instance", fmt.Sprint(i+1))
		if o.Series {
			vol.render(s, rng(seed, i), o)
		} else {
			r := rng(seed, i)
			v := newVolume(r, o, 1)
			v.render(s, r, o)
		}
	}
	return out
}

// rng returns the random source of slice i (or of the volume, i = -1).
func rng(seed int64, i int) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15^uint64(int64(i))))
}

// ellipse is axis-aligned: semi-axis a along rows, b along columns (px).
type ellipse struct{ r, c, a, b float64 }

// norm is ((r-r0)/a)² + ((c-c0)/b)²: below 1 inside.
func (e ellipse) norm(r, c float64) float64 {
	dr, dc := (r-e.r)/e.a, (c-e.c)/e.b
	return dr*dr + dc*dc
}

// vessel is a capsule (a segment with a radius) that drifts with z.
type vessel struct {
	r0, c0, r1, c1 float64 // endpoints at z = 0 (px)
	dr, dc         float64 // drift in px per mm of z
	radius         float64 // px
	hu             float64
}

// sphere is a nodule of the volume.
type sphere struct {
	id        int
	r, c, z   float64 // centre: px, px, mm
	radiusMm  float64
	hu        float64
	irregular bool
	amp       float64 // edge modulation amplitude (fraction of the radius)
	lobes     float64
	phase     float64
}

// edge returns the radius factor of the nodule's edge at angle theta.
func (s *sphere) edge(theta float64) float64 {
	if !s.irregular {
		return 1
	}
	return 1 + s.amp*math.Sin(s.lobes*theta+s.phase)
}

// volume is the anatomy of one slice or series.
type volume struct {
	body    ellipse
	fatRim  float64 // inner edge of the fat rim, in body norm units
	lungs   [2]ellipse
	spine   ellipse
	vessels []vessel
	spheres []sphere
}

func uniform(r *rand.Rand, lo, hi float64) float64 { return lo + (hi-lo)*r.Float64() }

// newVolume draws the anatomy and the nodules. n is the number of slices
// (1 for independent slices).
func newVolume(r *rand.Rand, o Options, n int) *volume {
	rows, cols := float64(o.Rows), float64(o.Cols)
	v := &volume{}
	cr := rows/2 + uniform(r, -0.02, 0.02)*rows
	cc := cols/2 + uniform(r, -0.02, 0.02)*cols
	v.body = ellipse{cr, cc, uniform(r, 0.32, 0.37) * rows, uniform(r, 0.42, 0.46) * cols}
	v.fatRim = math.Pow(uniform(r, 0.88, 0.93), 2)
	for i, side := range []float64{-1, 1} {
		v.lungs[i] = ellipse{
			cr - 0.03*rows + uniform(r, -0.01, 0.01)*rows,
			cc + side*uniform(r, 0.19, 0.22)*cols,
			uniform(r, 0.20, 0.24) * rows,
			uniform(r, 0.12, 0.15) * cols,
		}
	}
	sr := 0.045 * math.Min(rows, cols)
	v.spine = ellipse{cr + v.body.a - 2.2*sr, cc, sr, sr}

	zSpan := float64(n-1) * o.SliceSpacingMm
	drift := 0.0
	if n > 1 {
		drift = 0.25
	}
	for _, l := range v.lungs {
		for range 6 + r.IntN(6) {
			// Discs (vessels seen end-on) and short segments (in plane).
			pr, pc := pointIn(r, l, 0.9)
			qr, qc := pr, pc
			if r.IntN(2) == 0 {
				ang := uniform(r, 0, 2*math.Pi)
				length := uniform(r, 0.1, 0.35) * math.Min(l.a, l.b)
				qr, qc = pr+length*math.Sin(ang), pc+length*math.Cos(ang)
			}
			v.vessels = append(v.vessels, vessel{
				r0: pr, c0: pc, r1: qr, c1: qc,
				dr: uniform(r, -drift, drift), dc: uniform(r, -drift, drift),
				radius: uniform(r, 0.5, 1.8) / o.SpacingMm,
				hu:     HUVessel + uniform(r, -15, 15),
			})
		}
	}

	k := 1 + r.IntN(o.MaxNodules)
	if n == 1 && r.Float64() < o.EmptyFraction {
		k = 0
	}
	for id := range k {
		s := sphere{id: id, hu: HUNodule + uniform(r, -15, 15)}
		if r.Float64() < o.IrregularFraction {
			s.irregular = true
			s.amp = uniform(r, 0.05, 0.12)
			s.lobes = float64(5 + r.IntN(4))
			s.phase = uniform(r, 0, 2*math.Pi)
		}
		s.radiusMm = drawDiameter(r, o) / 2
		if v.place(r, &s, o, zSpan) {
			v.spheres = append(v.spheres, s)
		}
	}
	return v
}

// drawDiameter picks a Lung-RADS category overlapping the allowed range,
// then a diameter inside both.
func drawDiameter(r *rand.Rand, o Options) float64 {
	type band struct{ lo, hi float64 }
	var fit []band
	for _, b := range []band{{0, 6}, {6, 8}, {8, 15}, {15, math.Inf(1)}} {
		lo, hi := math.Max(b.lo, o.MinDiameterMm), math.Min(b.hi, o.MaxDiameterMm)
		if lo < hi {
			fit = append(fit, band{lo, hi})
		}
	}
	if len(fit) == 0 {
		return o.MinDiameterMm
	}
	b := fit[r.IntN(len(fit))]
	return uniform(r, b.lo, b.hi)
}

// pointIn returns a uniform point inside ellipse e scaled by f.
func pointIn(r *rand.Rand, e ellipse, f float64) (float64, float64) {
	for {
		u, w := uniform(r, -1, 1), uniform(r, -1, 1)
		if u*u+w*w <= 1 {
			return e.r + f*e.a*u, e.c + f*e.b*w
		}
	}
}

// place puts s inside a lung, clear of the other nodules, shrinking it
// when the lung is too small. It reports false when no place was found.
func (v *volume) place(r *rand.Rand, s *sphere, o Options, zSpan float64) bool {
	for try := range 200 {
		l := v.lungs[r.IntN(2)]
		maxR := 0.7 * math.Min(l.a, l.b) * o.SpacingMm / (1 + s.amp)
		if s.radiusMm > maxR {
			s.radiusMm = maxR
		}
		if try > 100 {
			s.radiusMm *= 0.98 // crowded: try smaller
		}
		s.r, s.c = pointIn(r, l, 1)
		s.z = uniform(r, 0, zSpan)
		rpx := s.radiusMm / o.SpacingMm * (1 + s.amp)
		inside := true
		for j := range 36 {
			th := float64(j) * math.Pi / 18
			if l.norm(s.r+(rpx+1)*math.Sin(th), s.c+(rpx+1)*math.Cos(th)) >= 1 {
				inside = false
				break
			}
		}
		if !inside {
			continue
		}
		clear := true
		for _, t := range v.spheres {
			dr := (s.r - t.r) * o.SpacingMm
			dc := (s.c - t.c) * o.SpacingMm
			dz := s.z - t.z
			gap := s.radiusMm*(1+s.amp) + t.radiusMm*(1+t.amp) + 2*o.SpacingMm
			if dr*dr+dc*dc+dz*dz < gap*gap {
				clear = false
				break
			}
		}
		if clear {
			return true
		}
	}
	return false
}

// render draws the section of the volume at s.PositionMm into s.
func (v *volume) render(s *Slice, r *rand.Rand, o Options) {
	rows, cols := o.Rows, o.Cols
	z := s.PositionMm
	if !o.Series {
		z = 0
	}
	val := make([]float64, rows*cols)
	s.Mask = imgx.NewMask(rows, cols)
	s.Lung = imgx.NewMask(rows, cols)
	for y := range rows {
		for x := range cols {
			pr, pc := float64(y), float64(x)
			i := y*cols + x
			bn := v.body.norm(pr, pc)
			switch {
			case bn >= 1:
				val[i] = HUAir
			case v.spine.norm(pr, pc) < 1:
				val[i] = HUBone
			case bn >= v.fatRim:
				val[i] = HUFat
			default:
				val[i] = HUSoftTissue
			}
			for _, l := range v.lungs {
				if l.norm(pr, pc) < 1 {
					val[i] = HULung + 40*(pr-l.r)/l.a // denser towards the back
					s.Lung.Pix[i] = 1
				}
			}
		}
	}
	for _, ve := range v.vessels {
		v.drawVessel(val, s.Lung, ve, z, rows, cols)
	}
	for _, sp := range v.spheres {
		dz := 0.0
		if o.Series {
			dz = z - sp.z
		}
		if math.Abs(dz) >= sp.radiusMm {
			continue
		}
		secR := math.Sqrt(sp.radiusMm*sp.radiusMm - dz*dz)
		n := drawNodule(val, s.Mask, &sp, secR/o.SpacingMm, rows, cols)
		if n == 0 {
			continue
		}
		s.Nodules = append(s.Nodules, Nodule{
			ID: sp.id, Row: sp.r, Col: sp.c,
			DiameterMm: 2 * sp.radiusMm, SectionDiameterMm: 2 * secR,
			Irregular: sp.irregular, Pixels: n,
		})
	}
	largest := 0.0
	for _, n := range s.Nodules {
		largest = math.Max(largest, n.DiameterMm)
	}
	if len(s.Nodules) > 0 {
		s.Label = LungRADS(largest)
	}
	s.HU = &imgx.HU{Rows: rows, Cols: cols, Pix: make([]int16, rows*cols)}
	for i, x := range val {
		if o.NoiseSigma > 0 {
			x += o.NoiseSigma * r.NormFloat64()
		}
		s.HU.Pix[i] = int16(math.Round(math.Max(HUMin, math.Min(HUMax, x))))
	}
}

// drawVessel paints a capsule at height z, only inside the lungs.
func (v *volume) drawVessel(val []float64, lung *imgx.Mask, ve vessel, z float64, rows, cols int) {
	r0, c0 := ve.r0+ve.dr*z, ve.c0+ve.dc*z
	r1, c1 := ve.r1+ve.dr*z, ve.c1+ve.dc*z
	lo := func(a, b float64) int { return max(0, int(math.Floor(math.Min(a, b)-ve.radius-1))) }
	hi := func(a, b, n float64) int { return min(int(n)-1, int(math.Ceil(math.Max(a, b)+ve.radius+1))) }
	sr, sc := r1-r0, c1-c0
	l2 := sr*sr + sc*sc
	for y := lo(r0, r1); y <= hi(r0, r1, float64(rows)); y++ {
		for x := lo(c0, c1); x <= hi(c0, c1, float64(cols)); x++ {
			i := y*cols + x
			if lung.Pix[i] == 0 {
				continue
			}
			t := 0.0
			if l2 > 0 {
				t = math.Max(0, math.Min(1, ((float64(y)-r0)*sr+(float64(x)-c0)*sc)/l2))
			}
			dy, dx := float64(y)-(r0+t*sr), float64(x)-(c0+t*sc)
			if dy*dy+dx*dx <= ve.radius*ve.radius {
				val[i] = ve.hu
			}
		}
	}
}

// drawNodule paints a section of radius rpx pixels and sets its mask
// pixels; it returns how many pixels it set.
func drawNodule(val []float64, mask *imgx.Mask, sp *sphere, rpx float64, rows, cols int) int {
	ext := rpx*(1+sp.amp) + 1
	n := 0
	for y := max(0, int(sp.r-ext)); y <= min(rows-1, int(sp.r+ext)+1); y++ {
		for x := max(0, int(sp.c-ext)); x <= min(cols-1, int(sp.c+ext)+1); x++ {
			dy, dx := float64(y)-sp.r, float64(x)-sp.c
			d := math.Hypot(dy, dx)
			if d > rpx*sp.edge(math.Atan2(dy, dx)) {
				continue
			}
			i := y*cols + x
			val[i] = sp.hu
			mask.Pix[i] = 1
			n++
		}
	}
	return n
}
