// Package report turns a replay's JSON report into a static page for
// sharing: a table of the per-model scores, one PNG sheet per model that
// compares every model on that model's best, median and worst slices (the
// CT in a lung window with the ground truth and each prediction outlined),
// and a Dice histogram per model. The pixels come from the replay's inputs,
// read again, and from the predicted masks that replay --masks-out wrote.
package report

import (
	"errors"
	"fmt"
	"html/template"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/overlay"
	"github.com/lungseg/lungseg/score"
	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// ErrNoModels means the report has no per-slice results to show.
var ErrNoModels = errors.New("report: no model results in the replay report")

// Kinds of chosen slices, in sheet order.
const (
	Best   = "best"
	Median = "median"
	Worst  = "worst"
)

// Choice is one chosen slice of one model.
type Choice struct {
	Kind   string
	Result replay.SliceResult
}

// Pick chooses, for each model, its best, median and worst slice by Dice
// among the slices whose ground truth is not empty (all slices with truth
// when none is). Ties go to the smaller id, so the choice is stable. A
// model with fewer than three such slices gets fewer choices (no slice is
// chosen twice).
func Pick(rep *replay.Report) map[string][]Choice {
	by := map[string][]replay.SliceResult{}
	anyTruth := map[string]bool{}
	for _, s := range rep.Slices {
		if s.HasTruth && s.Truth > 0 {
			anyTruth[s.Model] = true
		}
	}
	for _, s := range rep.Slices {
		if s.HasTruth && (s.Truth > 0 || !anyTruth[s.Model]) {
			by[s.Model] = append(by[s.Model], s)
		}
	}
	out := map[string][]Choice{}
	for m, rs := range by {
		sort.Slice(rs, func(i, j int) bool {
			if rs[i].Dice != rs[j].Dice {
				return rs[i].Dice > rs[j].Dice
			}
			return rs[i].ID < rs[j].ID
		})
		idx := []struct {
			kind string
			i    int
		}{{Best, 0}, {Median, (len(rs) - 1) / 2}, {Worst, len(rs) - 1}}
		seen := map[int]bool{}
		for _, c := range idx {
			if seen[c.i] {
				continue
			}
			seen[c.i] = true
			out[m] = append(out[m], Choice{Kind: c.kind, Result: rs[c.i]})
		}
	}
	return out
}

// Histogram counts values in [0,1] into bins equal bins (1 goes into the
// last bin; values outside are clamped).
func Histogram(values []float64, bins int) []int {
	h := make([]int, bins)
	for _, v := range values {
		if math.IsNaN(v) {
			continue
		}
		i := int(v * float64(bins))
		h[max(0, min(bins-1, i))]++
	}
	return h
}

// Slice is the CT and ground truth of one slice.
type Slice struct {
	HU    *imgx.HU
	Truth *imgx.Mask
}

// Pixels supplies what the sheets draw.
type Pixels struct {
	// Slices by slice id.
	Slices map[string]Slice
	// Pred returns a model's predicted mask of a slice; nil skips the
	// sheets.
	Pred func(model, id string) (*imgx.Mask, error)
}

// MasksDir reads predictions written by replay --masks-out:
// DIR/MODEL/<slice id>.png.
func MasksDir(dir string, read func(path string) (*imgx.Mask, error)) func(model, id string) (*imgx.Mask, error) {
	return func(model, id string) (*imgx.Mask, error) {
		rel := filepath.Clean(filepath.FromSlash(id))
		if filepath.IsAbs(rel) || strings.HasPrefix(rel, "..") {
			return nil, fmt.Errorf("report: slice id %q escapes the masks folder", id)
		}
		return read(filepath.Join(dir, model, rel+".png"))
	}
}

// Options configure Write. Zero fields take the defaults given.
type Options struct {
	// Tile is the side of each slice tile in the sheets (default 256).
	Tile int
	// Bins of the Dice histograms (default 20).
	Bins int
	// Title of the page (default "lungseg replay <id>").
	Title string
}

// Written lists the files Write made, relative to the output folder.
type Written struct {
	Page       string
	Sheets     map[string]string // model → sheet
	Histograms map[string]string // model → histogram
	// Missing lists what could not be drawn (a slice not found in the
	// inputs, a missing mask).
	Missing []string
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// fileName makes a model name safe as a file name ("m+tta" → "m_tta").
func fileName(s string) string { return unsafeName.ReplaceAllString(s, "_") }

// Write writes index.html, sheet-<model>.png and dice-<model>.png into
// dir.
func Write(dir string, rep *replay.Report, px Pixels, o Options) (*Written, error) {
	if o.Tile <= 0 {
		o.Tile = 256
	}
	if o.Bins <= 0 {
		o.Bins = 20
	}
	if o.Title == "" {
		o.Title = "lungseg replay " + rep.ReplayID
	}
	models := modelNames(rep)
	if len(models) == 0 {
		return nil, ErrNoModels
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	w := &Written{Page: "index.html", Sheets: map[string]string{}, Histograms: map[string]string{}}
	colors := map[string]color.RGBA{}
	for _, m := range models {
		colors[m] = overlay.ColorOf(m)
	}
	picks := Pick(rep)
	for _, m := range models {
		var dice []float64
		for _, s := range rep.Slices {
			if s.Model == m && s.HasTruth && s.Truth > 0 {
				dice = append(dice, s.Dice)
			}
		}
		name := "dice-" + fileName(m) + ".png"
		if err := writePNG(filepath.Join(dir, name), drawHistogram(m, Histogram(dice, o.Bins), colors[m])); err != nil {
			return nil, err
		}
		w.Histograms[m] = name
		if px.Pred == nil || len(picks[m]) == 0 {
			continue
		}
		sheet, missing := drawSheet(m, picks[m], models, colors, rep, px, o.Tile)
		w.Missing = append(w.Missing, missing...)
		name = "sheet-" + fileName(m) + ".png"
		if err := writePNG(filepath.Join(dir, name), sheet); err != nil {
			return nil, err
		}
		w.Sheets[m] = name
	}
	if err := writePage(filepath.Join(dir, w.Page), o.Title, rep, models, colors, picks, w); err != nil {
		return nil, err
	}
	return w, nil
}

func modelNames(rep *replay.Report) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range rep.Slices {
		if !seen[s.Model] {
			seen[s.Model] = true
			out = append(out, s.Model)
		}
	}
	sort.Strings(out)
	return out
}

func writePNG(path string, img image.Image) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("report: writing %s: %w", path, err)
	}
	return f.Close()
}

// Sheet layout.
const (
	pad     = 8
	lineH   = 15
	labelsH = 2*lineH + 4
	headerH = 24
	rowHead = 150
)

var (
	bg   = color.RGBA{24, 28, 34, 255}
	fg   = color.RGBA{230, 233, 238, 255}
	dim  = color.RGBA{140, 150, 163, 255}
	grid = color.RGBA{60, 68, 80, 255}
)

func text(img draw.Image, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// truncate shortens s to fit n characters of the 7-pixel font, keeping its
// end (model names differ at their ends: "+crop", "-crop"). The font is
// ASCII only (basicfont draws anything else as a box), so the cut is
// marked with "..".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n <= 2 {
		return s[len(s)-n:]
	}
	return ".." + s[len(s)-n+2:]
}

// drawSheet draws one model's chosen slices (rows) under every model
// (columns): each tile is the CT with the truth (green) and that column's
// prediction outlined.
func drawSheet(model string, picks []Choice, models []string, colors map[string]color.RGBA, rep *replay.Report, px Pixels, tile int) (*image.RGBA, []string) {
	cols := len(models)
	wd := rowHead + cols*(tile+pad) + pad
	ht := headerH + len(picks)*(tile+labelsH+pad) + pad
	img := image.NewRGBA(image.Rect(0, 0, wd, ht))
	draw.Draw(img, img.Bounds(), image.NewUniform(bg), image.Point{}, draw.Src)
	text(img, pad, 17, fmt.Sprintf("%s: best, median and worst slices by Dice; green = ground truth", model), fg)
	result := map[[2]string]replay.SliceResult{}
	for _, s := range rep.Slices {
		result[[2]string{s.Model, s.ID}] = s
	}
	var missing []string
	for r, c := range picks {
		y0 := headerH + r*(tile+labelsH+pad)
		text(img, pad, y0+lineH, c.Kind, fg)
		text(img, pad, y0+2*lineH, truncate(c.Result.ID, (rowHead-pad)/7), dim)
		if c.Result.Label != "" {
			text(img, pad, y0+3*lineH, c.Result.Label, dim)
		}
		sl, ok := px.Slices[c.Result.ID]
		for j, m := range models {
			x0 := rowHead + j*(tile+pad)
			frame := image.Rect(x0, y0, x0+tile, y0+tile)
			draw.Draw(img, frame, image.NewUniform(grid), image.Point{}, draw.Src)
			if !ok {
				text(img, x0+pad, y0+tile/2, "slice not in the inputs", dim)
				if j == 0 {
					missing = append(missing, "slice "+c.Result.ID)
				}
				continue
			}
			layers := []overlay.Layer{}
			pred, err := px.Pred(m, c.Result.ID)
			if err != nil {
				missing = append(missing, fmt.Sprintf("%s mask of %s: %v", m, c.Result.ID, err))
			} else if pred.Rows == sl.HU.Rows && pred.Cols == sl.HU.Cols {
				layers = append(layers, overlay.Layer{Mask: pred, Color: colors[m], Thickness: 2})
			} else {
				missing = append(missing, fmt.Sprintf("%s mask of %s is %d×%d, slice %d×%d", m, c.Result.ID, pred.Rows, pred.Cols, sl.HU.Rows, sl.HU.Cols))
			}
			if sl.Truth != nil {
				layers = append(layers, overlay.Layer{Mask: sl.Truth, Color: overlay.TruthColor, Thickness: 1})
			}
			t, err := overlay.Render(sl.HU, overlay.LungWindow, tile, layers)
			if err != nil {
				missing = append(missing, err.Error())
				continue
			}
			// Centre a non-square slice in its tile.
			off := image.Pt(x0+(tile-t.Bounds().Dx())/2, y0+(tile-t.Bounds().Dy())/2)
			draw.Draw(img, t.Bounds().Add(off), t, image.Point{}, draw.Src)
			lab := m
			if res, ok := result[[2]string{m, c.Result.ID}]; ok {
				lab = fmt.Sprintf("%s Dice %.3f", m, res.Dice)
			}
			draw.Draw(img, image.Rect(x0, y0+tile+4, x0+10, y0+tile+14), image.NewUniform(colors[m]), image.Point{}, draw.Src)
			text(img, x0+14, y0+tile+lineH-1, truncate(lab, (tile-14)/7), fg)
		}
	}
	return img, missing
}

// Histogram layout.
const (
	histW, histH = 480, 260
	marginL      = 44
	marginB      = 36
	marginT      = 26
)

// drawHistogram draws one model's Dice histogram: bars over [0,1] with
// the count axis.
func drawHistogram(model string, counts []int, c color.RGBA) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, histW, histH))
	draw.Draw(img, img.Bounds(), image.NewUniform(bg), image.Point{}, draw.Src)
	total, top := 0, 1
	for _, n := range counts {
		total += n
		top = max(top, n)
	}
	text(img, marginL, 17, fmt.Sprintf("%s: Dice of %d slices with truth pixels", model, total), fg)
	plotW, plotH := histW-marginL-12, histH-marginT-marginB
	x0, y0 := marginL, histH-marginB // origin, bottom-left
	for i, n := range counts {
		if n == 0 {
			continue
		}
		bx0 := x0 + i*plotW/len(counts)
		bx1 := x0 + (i+1)*plotW/len(counts) - 1
		h := int(math.Round(float64(n) / float64(top) * float64(plotH)))
		draw.Draw(img, image.Rect(bx0, y0-h, bx1, y0), image.NewUniform(c), image.Point{}, draw.Src)
	}
	// Axes and ticks.
	draw.Draw(img, image.Rect(x0, marginT, x0+1, y0+1), image.NewUniform(fg), image.Point{}, draw.Src)
	draw.Draw(img, image.Rect(x0, y0, x0+plotW, y0+1), image.NewUniform(fg), image.Point{}, draw.Src)
	for _, v := range []float64{0, 0.25, 0.5, 0.75, 1} {
		x := x0 + int(v*float64(plotW))
		draw.Draw(img, image.Rect(x, y0, x+1, y0+4), image.NewUniform(fg), image.Point{}, draw.Src)
		// Labels are 4 characters (28 px): centred, the last one kept
		// inside the image.
		text(img, min(x-14, histW-30), y0+16, fmt.Sprintf("%.2f", v), dim)
	}
	text(img, x0+plotW/2-14, y0+31, "Dice", dim)
	text(img, 4, marginT+9, fmt.Sprint(top), dim)
	text(img, 4, y0, "0", dim)
	return img
}

type pageModel struct {
	Name, Color, Sheet, Histogram   string
	Slices, WithTruth               int
	EmptyClean, EmptyFP             int
	MeanDice, DicePooled, IoUPooled string
	RMSE                            string
	BySize                          []string // mean (n) per score.SizeBins
	Picks                           []Choice
}

type page struct {
	Title  string
	Sizes  []score.SizeBin
	Report *replay.Report
	Truth  string
	// AnyTruth: some slice came with a ground truth (else no Dice, no
	// green outline, and the page says so).
	AnyTruth bool
	Models   []pageModel
	Errors   []replay.ErrorResult
	More     int
	Missing  []string
	// Nodules are the first 500 of the report's nodules; MoreNodules
	// counts the rest. Categories are the confusion tables by model.
	Nodules     []replay.Nodule
	MoreNodules int
	Categories  []pageCategories
}

// pageCategories is one model's size-category confusion table.
type pageCategories struct {
	Model string
	replay.CategoryTable
	Rows []pageCategoryRow
}

type pageCategoryRow struct {
	Label  string
	Counts []int
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"deref": func(p *float64) float64 { return *p },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{margin:0;padding:1rem 2rem;background:#111418;color:#e6e9ee;font:14px/1.45 system-ui,sans-serif}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse}th,td{padding:.2rem .6rem;text-align:right;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}thead th{color:#8b95a3;font-weight:normal;border-bottom:1px solid #2a313b}
.sw{display:inline-block;width:.9rem;height:.9rem;border-radius:2px;margin-right:.35rem;vertical-align:-2px}
.muted{color:#8b95a3}img{max-width:100%;image-rendering:pixelated}code{font-size:.85rem}
.hists{display:flex;flex-wrap:wrap;gap:1rem}
</style></head><body>
<h1>{{.Title}}</h1>
<p class="muted">{{.Report.Ingested}} slices ingested, {{.Report.Rejected}} inputs rejected, {{len .Report.Errors}} errors, {{printf "%.1f" .Report.Seconds}} s; started {{.Report.Started.Format "2006-01-02 15:04:05 MST"}}.<br>
Inputs: {{range $i, $in := .Report.Inputs}}{{if $i}}, {{end}}<code>{{$in}}</code>{{end}}</p>
<h2>Scores</h2>
<table id="scores"><thead><tr><th>model</th><th>slices</th><th>with truth</th><th>Dice mean (truth&gt;0)</th>{{range .Sizes}}<th>Dice {{.Label}} mm</th>{{end}}<th>empty truth: clean</th><th>empty truth: FP</th><th>Dice pooled</th><th>IoU pooled</th><th>RMSE</th></tr></thead><tbody>
{{range .Models}}<tr data-model="{{.Name}}"><td><span class="sw" style="background:{{.Color}}"></span>{{.Name}}</td><td>{{.Slices}}</td><td>{{.WithTruth}}</td><td class="headline">{{.MeanDice}}</td>{{range .BySize}}<td>{{.}}</td>{{end}}<td>{{.EmptyClean}}</td><td>{{.EmptyFP}}</td><td>{{.DicePooled}}</td><td>{{.IoUPooled}}</td><td>{{.RMSE}}</td></tr>
{{end}}</tbody></table>
<p class="muted">Dice mean: per-slice Dice ± sd over the slices whose ground truth is not empty ("with truth"); by size, the same mean
by the longest diameter of the truth's largest connected component, with the number of slices in brackets. Slices whose truth is empty
are counted apart: clean when nothing was predicted, FP when something was. Dice and IoU pooled: over all pixels of all slices,
2·ΣTP/(Σtruth+Σpredicted) and ΣTP/(Σtruth+Σpredicted−ΣTP). RMSE of the probability map, over all slices.
{{if .AnyTruth}}<span class="sw" style="background:{{.Truth}}"></span>ground truth outline; each model's prediction in its colour.{{else}}</p>
<p id="no-truth"><strong>No slice of this replay came with a ground truth</strong> (for DICOM inputs give <code>--masks DIR</code>, or keep a
<code>masks/</code> folder beside them): there is no Dice, and no green outline; each model's prediction is drawn in its colour.{{end}}</p>
<h2>Dice histograms</h2>
<div class="hists">{{range .Models}}<img src="{{.Histogram}}" alt="Dice histogram of {{.Name}}" width="480" height="260">{{end}}</div>
{{range .Models}}{{if .Sheet}}<h2>Best, median and worst slices of {{.Name}}</h2>
<p class="muted">{{range $i, $c := .Picks}}{{if $i}}; {{end}}{{$c.Kind}}: <code>{{$c.Result.ID}}</code> (Dice {{printf "%.3f" $c.Result.Dice}}){{end}}</p>
<img src="{{.Sheet}}" alt="comparison sheet for {{.Name}}">
{{end}}{{end}}
<h2>Nodules</h2>
{{if .Report.FindingsNote}}<p id="findings-note"><strong>Findings may be incomplete:</strong> {{.Report.FindingsNote}}</p>{{end}}
{{if .Nodules}}<table id="nodules"><thead><tr><th>model</th><th>series</th><th>slices</th><th>first slice</th><th>last slice</th><th>longest diameter mm</th><th>volume mm³</th><th>category (size-based)</th><th>label</th><th>mean p</th></tr></thead><tbody>
{{range .Nodules}}<tr><td>{{.Model}}</td><td style="text-align:left"><code>{{if .Series}}{{.Series}}{{else}}-{{end}}</code></td><td>{{.Slices}}</td><td><code>{{.FirstSlice}}</code></td><td><code>{{.LastSlice}}</code></td><td>{{printf "%.1f" .DiameterMm}}{{if .SpacingAssumed}}*{{end}}</td><td>{{printf "%.0f" .VolumeMm3}}{{if .ThicknessAssumed}}*{{end}}</td><td>{{.Category}}</td><td>{{.Label}}</td><td>{{if .MeanProb}}{{printf "%.2f" (deref .MeanProb)}}{{else}}-{{end}}</td></tr>
{{end}}</tbody></table>{{if .MoreNodules}}<p class="muted">… and {{.MoreNodules}} more in the JSON report.</p>{{end}}
<p class="muted">A nodule is one model's predicted components that overlap on adjacent slices of one series (a slice without a series is
a nodule of its own: use <code>lungseg replay --series-per-input</code> for pickles whose rows are one series). * pixel spacing or slice
thickness assumed, not read from the input.</p>{{else}}<p class="muted">No nodule was found.</p>{{end}}
{{range .Categories}}<h3>Size-based estimate against label1, {{.Model}}: {{.Agree}} of {{.Total}} labelled slices agree</h3>
<table class="categories"><thead><tr><th>label \ estimate</th>{{range .Estimates}}<th>{{.}}</th>{{end}}</tr></thead><tbody>
{{range .Rows}}<tr><td>{{.Label}}</td>{{range .Counts}}<td>{{.}}</td>{{end}}</tr>
{{end}}</tbody></table>{{end}}
{{if .Missing}}<h2>Not drawn</h2><ul>{{range .Missing}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{if .Errors}}<h2>Errors</h2><table><thead><tr><th>slice or input</th><th>stage</th><th>model</th><th>error</th></tr></thead><tbody>
{{range .Errors}}<tr><td><code>{{.ID}}</code></td><td>{{.Stage}}</td><td>{{.Model}}</td><td style="text-align:left">{{.Error}}</td></tr>
{{end}}</tbody></table>{{if .More}}<p class="muted">… and {{.More}} more in the JSON report.</p>{{end}}{{end}}
</body></html>
`))

func writePage(path, title string, rep *replay.Report, models []string, colors map[string]color.RGBA, picks map[string][]Choice, w *Written) error {
	p := page{Title: title, Sizes: score.SizeBins, Report: rep, Truth: overlay.Hex(overlay.TruthColor), Missing: w.Missing}
	for _, s := range rep.Slices {
		if s.HasTruth {
			p.AnyTruth = true
			break
		}
	}
	for _, m := range models {
		sum := rep.Models[m]
		pm := pageModel{Name: m, Color: overlay.Hex(colors[m]), Sheet: w.Sheets[m], Histogram: w.Histograms[m],
			Slices: sum.Slices, WithTruth: sum.WithTruth, EmptyClean: sum.EmptyClean, EmptyFP: sum.EmptyFP, MeanDice: "-",
			DicePooled: fmt.Sprintf("%.3f", sum.DicePooled), IoUPooled: fmt.Sprintf("%.3f", sum.IoUPooled), RMSE: sum.RMSE.String(),
			Picks: picks[m]}
		if sum.MeanDice.N > 0 {
			pm.MeanDice = sum.MeanDice.String()
		}
		for i := range score.SizeBins {
			st := score.Stat{}
			if i < len(sum.BySize) {
				st = sum.BySize[i].Dice
			}
			pm.BySize = append(pm.BySize, st.MeanN())
		}
		p.Models = append(p.Models, pm)
	}
	p.Nodules = rep.Nodules
	if len(p.Nodules) > 500 {
		p.MoreNodules = len(p.Nodules) - 500
		p.Nodules = p.Nodules[:500]
	}
	for _, m := range models {
		ct, ok := rep.Categories[m]
		if !ok {
			continue
		}
		pc := pageCategories{Model: m, CategoryTable: ct}
		for i, l := range ct.Labels {
			if i < len(ct.Counts) {
				pc.Rows = append(pc.Rows, pageCategoryRow{Label: l, Counts: ct.Counts[i]})
			}
		}
		p.Categories = append(p.Categories, pc)
	}
	p.Errors = rep.Errors
	if len(p.Errors) > 200 {
		p.More = len(p.Errors) - 200
		p.Errors = p.Errors[:200]
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pageTmpl.Execute(f, p); err != nil {
		f.Close()
		return fmt.Errorf("report: writing %s: %w", path, err)
	}
	return f.Close()
}
