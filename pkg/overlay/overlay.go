// Package overlay draws CT slices for people: Hounsfield units through a
// display window to grey, with the outlines of binary masks (ground truth,
// each model's prediction) in distinct colours on top; and measures the
// connected regions of a mask (findings). The viewer (internal/web) and the
// static report (internal/report) share it.
package overlay

import (
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"math"
	"sort"
	"strings"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// Window maps HU to grey: Center-Width/2 is black, Center+Width/2 white.
type Window struct{ Center, Width float64 }

// LungWindow is the usual lung window (level -600 HU, width 1500 HU).
var LungWindow = Window{Center: -600, Width: 1500}

// Grey returns the display value of one HU value.
func (w Window) Grey(hu int16) uint8 {
	lo := w.Center - w.Width/2
	v := (float64(hu) - lo) / w.Width * 255
	return uint8(math.Max(0, math.Min(255, math.Round(v))))
}

// TruthColor is the ground-truth outline colour (pure green).
var TruthColor = color.RGBA{0, 255, 0, 255}

// palette holds the model outline colours: saturated, distinct from the
// truth's green and from grey. The first nine are the shipped families'
// (see ColorOf), three per family: detector, cascade, crop model alone.
var palette = []color.RGBA{
	{255, 40, 40, 255},   // red: resnet50-unet
	{255, 130, 0, 255},   // orange: resnet50-unet+crop
	{255, 150, 190, 255}, // pink: resnet50-unet-crop
	{40, 140, 255, 255},  // blue: unetr
	{0, 230, 230, 255},   // cyan: unetr+crop
	{140, 200, 255, 255}, // sky: unetr-crop
	{255, 210, 0, 255},   // yellow: swin-unet
	{255, 60, 255, 255},  // magenta: swin-unet+crop
	{170, 90, 255, 255},  // violet: swin-unet-crop
	{200, 120, 80, 255},  // brown
	{210, 160, 255, 255}, // lilac
	{255, 225, 150, 255}, // sand
}

// ModelColor returns the i-th palette colour (cycling).
func ModelColor(i int) color.RGBA {
	if i < 0 {
		i = -i
	}
	return palette[i%len(palette)]
}

// families are the shipped architectures, in palette order.
var families = []string{"resnet50-unet", "unetr", "swin-unet"}

// ColorOf returns a model's outline colour from its name alone, so one model
// keeps one colour in the viewer, the report and from run to run, whatever
// order results arrive in. The shipped families have fixed colours (the
// detector, its "+crop" cascade and its "-crop" crop model in three shades);
// any other name gets a hue from a hash of the name, away from the truth's
// green.
func ColorOf(model string) color.RGBA {
	for f, fam := range families {
		if !strings.HasPrefix(model, fam) {
			continue
		}
		rest := model[len(fam):]
		switch {
		case strings.HasSuffix(rest, "+crop"):
			return palette[3*f+1]
		case strings.HasSuffix(rest, "-crop"):
			return palette[3*f+2]
		case rest == "" || rest == "-small" || rest == "-full":
			return palette[3*f]
		}
	}
	// any other name: a hue from its hash, outside the truth's greens
	h := fnv.New32a()
	h.Write([]byte(model))
	hue := float64(h.Sum32() % 280)
	if hue >= 75 {
		hue += 95 // skip 75°–170°
	}
	return hsv(hue, 0.75, 1)
}

// hsv converts a hue in degrees, a saturation and a value in [0,1] to RGB.
func hsv(h, s, v float64) color.RGBA {
	c := v * s
	x := c * (1 - math.Abs(math.Mod(h/60, 2)-1))
	var r, g, b float64
	switch {
	case h < 60:
		r, g = c, x
	case h < 120:
		r, g = x, c
	case h < 180:
		g, b = c, x
	case h < 240:
		g, b = x, c
	case h < 300:
		r, b = x, c
	default:
		r, b = c, x
	}
	m := v - c
	u := func(f float64) uint8 { return uint8(math.Round((f + m) * 255)) }
	return color.RGBA{u(r), u(g), u(b), 255}
}

// Hex writes a colour as #rrggbb.
func Hex(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

// Layer is one mask drawn as an outline.
type Layer struct {
	Mask  *imgx.Mask
	Color color.RGBA
	// Thickness of the outline in output pixels (default 1).
	Thickness int
}

// DashLength is the length in pixels of the dashes in which coinciding
// outlines alternate.
const DashLength = 3

// OutSize returns the output size of a rows×cols slice scaled so that its
// longer side is size (size ≤ 0 keeps the original size).
func OutSize(rows, cols, size int) (int, int) {
	if size <= 0 {
		return rows, cols
	}
	long := max(rows, cols)
	r := max(1, int(math.Round(float64(rows)*float64(size)/float64(long))))
	c := max(1, int(math.Round(float64(cols)*float64(size)/float64(long))))
	return r, c
}

// Render draws hu through w, scaled (nearest neighbour) so that its longer
// side is size pixels (size ≤ 0: original size), with the outline of each
// layer drawn on top; where outlines of several layers coincide they
// alternate in dashes of DashLength pixels. Outlines are found at the output
// resolution, so they stay thin and closed whatever the scale. Layers
// whose mask size differs from hu's are an error.
func Render(hu *imgx.HU, w Window, size int, layers []Layer) (*image.RGBA, error) {
	if hu == nil {
		return nil, fmt.Errorf("overlay: no image")
	}
	rows, cols := OutSize(hu.Rows, hu.Cols, size)
	img := image.NewRGBA(image.Rect(0, 0, cols, rows))
	rmap := axisMap(hu.Rows, rows)
	cmap := axisMap(hu.Cols, cols)
	for r := 0; r < rows; r++ {
		src := hu.Pix[rmap[r]*hu.Cols:]
		o := img.PixOffset(0, r)
		for c := 0; c < cols; c++ {
			g := w.Grey(src[cmap[c]])
			img.Pix[o], img.Pix[o+1], img.Pix[o+2], img.Pix[o+3] = g, g, g, 255
			o += 4
		}
	}
	edges := make([]*imgx.Mask, len(layers))
	for i, l := range layers {
		if l.Mask == nil {
			continue
		}
		if l.Mask.Rows != hu.Rows || l.Mask.Cols != hu.Cols {
			return nil, fmt.Errorf("overlay: layer %d mask is %d×%d, image %d×%d", i, l.Mask.Rows, l.Mask.Cols, hu.Rows, hu.Cols)
		}
		scaled := l.Mask
		if rows != hu.Rows || cols != hu.Cols {
			scaled = imgx.NewMask(rows, cols)
			for r := 0; r < rows; r++ {
				for c := 0; c < cols; c++ {
					scaled.Pix[r*cols+c] = l.Mask.Pix[rmap[r]*hu.Cols+cmap[c]]
				}
			}
		}
		edges[i] = Outline(scaled)
		if l.Thickness > 1 {
			edges[i] = Dilate(edges[i], l.Thickness-1)
		}
	}
	// Where outlines coincide (a prediction that follows the truth, two
	// models that agree) they alternate in dashes along the diagonal, so
	// every colour stays visible.
	on := make([]int, 0, len(layers))
	for p := 0; p < rows*cols; p++ {
		on = on[:0]
		for i, e := range edges {
			if e != nil && e.Pix[p] != 0 {
				on = append(on, i)
			}
		}
		if len(on) == 0 {
			continue
		}
		x, y := p%cols, p/cols
		l := layers[on[((x+y)/DashLength)%len(on)]]
		o := img.PixOffset(x, y)
		img.Pix[o], img.Pix[o+1], img.Pix[o+2], img.Pix[o+3] = l.Color.R, l.Color.G, l.Color.B, 255
	}
	return img, nil
}

// axisMap maps each of m output positions to the nearest of n inputs.
func axisMap(n, m int) []int {
	out := make([]int, m)
	for i := range out {
		out[i] = min(n-1, int((float64(i)+0.5)*float64(n)/float64(m)))
	}
	return out
}

// Outline returns the set pixels of m that touch an unset pixel or the
// border (4-neighbourhood): the region's boundary, one pixel wide.
func Outline(m *imgx.Mask) *imgx.Mask {
	out := imgx.NewMask(m.Rows, m.Cols)
	for r := 0; r < m.Rows; r++ {
		for c := 0; c < m.Cols; c++ {
			i := r*m.Cols + c
			if m.Pix[i] == 0 {
				continue
			}
			if r == 0 || c == 0 || r == m.Rows-1 || c == m.Cols-1 ||
				m.Pix[i-1] == 0 || m.Pix[i+1] == 0 || m.Pix[i-m.Cols] == 0 || m.Pix[i+m.Cols] == 0 {
				out.Pix[i] = 1
			}
		}
	}
	return out
}

// Dilate grows the set pixels of m by a square of radius k.
func Dilate(m *imgx.Mask, k int) *imgx.Mask {
	out := imgx.NewMask(m.Rows, m.Cols)
	for r := 0; r < m.Rows; r++ {
		for c := 0; c < m.Cols; c++ {
			if m.Pix[r*m.Cols+c] == 0 {
				continue
			}
			for dr := max(0, r-k); dr <= min(m.Rows-1, r+k); dr++ {
				for dc := max(0, c-k); dc <= min(m.Cols-1, c+k); dc++ {
					out.Pix[dr*m.Cols+dc] = 1
				}
			}
		}
	}
	return out
}

// Region is one connected region (8-neighbourhood) of a mask.
type Region struct {
	Pixels int
	// Bounding box, inclusive.
	MinRow, MinCol, MaxRow, MaxCol int
	// Centroid in pixels.
	Row, Col float64
}

// DiameterMm is the diameter of the disc with the region's area, given
// the pixel spacing.
func (r Region) DiameterMm(rowMm, colMm float64) float64 {
	return 2 * math.Sqrt(float64(r.Pixels)*rowMm*colMm/math.Pi)
}

// Regions returns the connected regions of m, largest first.
func Regions(m *imgx.Mask) []Region {
	seen := make([]bool, len(m.Pix))
	var out []Region
	var stack []int
	for start, v := range m.Pix {
		if v == 0 || seen[start] {
			continue
		}
		reg := Region{MinRow: m.Rows, MinCol: m.Cols, MaxRow: -1, MaxCol: -1}
		var sr, sc float64
		stack = append(stack[:0], start)
		seen[start] = true
		for len(stack) > 0 {
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			r, c := p/m.Cols, p%m.Cols
			reg.Pixels++
			sr += float64(r)
			sc += float64(c)
			reg.MinRow, reg.MaxRow = min(reg.MinRow, r), max(reg.MaxRow, r)
			reg.MinCol, reg.MaxCol = min(reg.MinCol, c), max(reg.MaxCol, c)
			for dr := -1; dr <= 1; dr++ {
				for dc := -1; dc <= 1; dc++ {
					nr, nc := r+dr, c+dc
					if nr < 0 || nc < 0 || nr >= m.Rows || nc >= m.Cols {
						continue
					}
					q := nr*m.Cols + nc
					if m.Pix[q] != 0 && !seen[q] {
						seen[q] = true
						stack = append(stack, q)
					}
				}
			}
		}
		reg.Row, reg.Col = sr/float64(reg.Pixels), sc/float64(reg.Pixels)
		out = append(out, reg)
	}
	// Largest first; ties by position for a stable order.
	sortRegions(out)
	return out
}

func sortRegions(rs []Region) {
	sort.Slice(rs, func(i, j int) bool { return less(rs[i], rs[j]) })
}

func less(a, b Region) bool {
	if a.Pixels != b.Pixels {
		return a.Pixels > b.Pixels
	}
	if a.MinRow != b.MinRow {
		return a.MinRow < b.MinRow
	}
	return a.MinCol < b.MinCol
}
