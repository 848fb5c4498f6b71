package report

import (
	"context"
	"golang.org/x/image/font/basicfont"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/overlay"
	"github.com/lungseg/lungseg/score"
)

func TestPick(t *testing.T) {
	r := func(model, id string, dice float64, truth int64) replay.SliceResult {
		return replay.SliceResult{ID: id, Model: model, Dice: dice, Truth: truth, HasTruth: true}
	}
	rep := &replay.Report{Slices: []replay.SliceResult{
		r("a", "1", 0.9, 10), r("a", "2", 0.1, 10), r("a", "3", 0.5, 10), r("a", "4", 0.7, 10), r("a", "e", 1, 0),
		{ID: "n", Model: "a", Dice: 1},             // no truth: never chosen
		r("b", "1", 0.4, 10), r("b", "2", 0.4, 10), // tie: smaller id first
		r("c", "x", 1, 0), // only empty truth: still chosen
	}}
	got := Pick(rep)
	ids := func(cs []Choice) (out []string) {
		for _, c := range cs {
			out = append(out, c.Kind+":"+c.Result.ID)
		}
		return out
	}
	for m, want := range map[string][]string{
		"a": {"best:1", "median:4", "worst:2"}, // 0.9 0.7 0.5 0.1: median index 1
		"b": {"best:1", "worst:2"},
		"c": {"best:x"},
	} {
		if g := ids(got[m]); !reflect.DeepEqual(g, want) {
			t.Errorf("%s: %v, want %v", m, g, want)
		}
	}
	if len(got) != 3 {
		t.Errorf("models %v", got)
	}
}

func TestHistogram(t *testing.T) {
	got := Histogram([]float64{0, 0.05, 0.1, 0.55, 1, 1.2, -0.1}, 10)
	want := []int{3, 1, 0, 0, 0, 1, 0, 0, 0, 2}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Histogram = %v, want %v", got, want)
	}
}

func TestIDPrefixes(t *testing.T) {
	if got := replay.IDPrefixes([]string{"/x/a.pkl"}); !reflect.DeepEqual(got, []string{""}) {
		t.Errorf("single input: %q", got)
	}
	got := replay.IDPrefixes([]string{"/x/a.pkl", "/y/a.pkl", "/z/dicom"})
	if want := []string{"a/", "a~2/", "dicom/"}; !reflect.DeepEqual(got, want) {
		t.Errorf("IDPrefixes = %q, want %q", got, want)
	}
}

func dice(p, g *imgx.Mask) float64 {
	inter, a, b := 0, 0, 0
	for i := range p.Pix {
		if p.Pix[i] != 0 {
			a++
			if g.Pix[i] != 0 {
				inter++
			}
		}
		if g.Pix[i] != 0 {
			b++
		}
	}
	if a+b == 0 {
		return 1
	}
	return 2 * float64(inter) / float64(a+b)
}

// TestWrite draws a report from phantom PNG pairs and masks written as
// replay --masks-out writes them: model "a" predicts the truth exactly,
// "b+tta" predicts a shifted copy.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	if err := os.MkdirAll(in, 0o755); err != nil {
		t.Fatal(err)
	}
	slices := phantom.Generate(3, 5, phantom.Options{Rows: 96, Cols: 96, SpacingMm: 3, EmptyFraction: -1})
	if err := phantom.WritePNG(in, slices); err != nil {
		t.Fatal(err)
	}
	masks := filepath.Join(dir, "masks-out")
	rep := &replay.Report{ReplayID: "r-test", Inputs: []string{in}, Ingested: int64(len(slices)), Models: map[string]score.ModelSummary{}}
	agg := score.NewAggregator()
	for _, s := range slices {
		shift := imgx.NewMask(s.Mask.Rows, s.Mask.Cols)
		for i := range s.Mask.Pix {
			if i >= 3 && s.Mask.Pix[i-3] != 0 {
				shift.Pix[i] = 1
			}
		}
		for m, pred := range map[string]*imgx.Mask{"a": s.Mask, "b+tta": shift} {
			if err := pngpair.WriteMask(filepath.Join(masks, m, s.Name()+".png"), pred); err != nil {
				t.Fatal(err)
			}
			d := dice(pred, s.Mask)
			rep.Slices = append(rep.Slices, replay.SliceResult{ID: s.Name(), Model: m, HasTruth: true, Dice: d, Truth: int64(s.Mask.Count())})
			agg.Add(m, "", score.Metrics{Dice: d, Truth: s.Mask.Count()})
		}
	}
	rep.Models = agg.Summary()
	picks := Pick(rep)
	px, err := LoadInputs(context.Background(), formats.All(), rep.Inputs, "", Wanted(picks))
	if err != nil {
		t.Fatal(err)
	}
	if len(px) != len(Wanted(picks)) {
		t.Fatalf("loaded %d of %d wanted slices", len(px), len(Wanted(picks)))
	}
	out := filepath.Join(dir, "report")
	w, err := Write(out, rep, Pixels{Slices: px, Pred: MasksDir(masks, pngpair.ReadMask)}, Options{Tile: 128})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Missing) != 0 {
		t.Errorf("missing: %v", w.Missing)
	}
	if w.Sheets["b+tta"] != "sheet-b_tta.png" || w.Histograms["a"] != "dice-a.png" {
		t.Fatalf("written %+v", w)
	}

	html, err := os.ReadFile(filepath.Join(out, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"r-test", "sheet-a.png", "sheet-b_tta.png", "dice-a.png", "dice-b_tta.png", `data-model="b&#43;tta"`, "background:" + overlay.Hex(overlay.ColorOf("a"))} {
		if !strings.Contains(string(html), s) {
			t.Errorf("page lacks %q", s)
		}
	}
	for _, s := range []string{"ZgotmplZ", "http://", "https://"} {
		if strings.Contains(string(html), s) {
			t.Errorf("page contains %q", s)
		}
	}

	// The sheet of "a": rows = its picks, columns = both models; the
	// truth's green and both model colours are drawn.
	sheet := readPNG(t, filepath.Join(out, w.Sheets["a"]))
	wantW := rowHead + 2*(128+pad) + pad
	wantH := headerH + len(picks["a"])*(128+labelsH+pad) + pad
	if b := sheet.Bounds(); b.Dx() != wantW || b.Dy() != wantH {
		t.Errorf("sheet %v, want %d×%d", b, wantW, wantH)
	}
	count := map[color.RGBA]int{}
	tileA := image.Rect(rowHead, headerH, rowHead+128, headerH+128)
	tileB := tileA.Add(image.Pt(128+pad, 0))
	for _, r := range []image.Rectangle{tileA, tileB} {
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				count[color.RGBAModel.Convert(sheet.At(x, y)).(color.RGBA)]++
			}
		}
	}
	ca, cb := overlay.ColorOf("a"), overlay.ColorOf("b+tta")
	if count[overlay.TruthColor] == 0 || count[ca] == 0 || count[cb] == 0 {
		t.Errorf("first row: %d green, %d of a's colour, %d of b's", count[overlay.TruthColor], count[ca], count[cb])
	}

	// The histogram of "a": every Dice is 1, so one bar, full height, in
	// the last bin.
	h := readPNG(t, filepath.Join(out, w.Histograms["a"]))
	plotW := histW - marginL - 12
	lastBin := marginL + (20-1)*plotW/20 + 2
	firstBin := marginL + 2
	col := func(x int) int {
		n := 0
		for y := 0; y < histH; y++ {
			if color.RGBAModel.Convert(h.At(x, y)).(color.RGBA) == ca {
				n++
			}
		}
		return n
	}
	if n := col(lastBin); n != histH-marginT-marginB {
		t.Errorf("last bin bar is %d px, want %d", n, histH-marginT-marginB)
	}
	if n := col(firstBin); n != 0 {
		t.Errorf("first bin bar is %d px, want 0", n)
	}

	// Without predictions: histograms and the page only.
	w2, err := Write(filepath.Join(dir, "nopred"), rep, Pixels{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(w2.Sheets) != 0 || len(w2.Histograms) != 2 {
		t.Errorf("without predictions: %+v", w2)
	}
	if _, err := Write(dir, &replay.Report{}, Pixels{}, Options{}); err != ErrNoModels {
		t.Errorf("empty report: %v", err)
	}
	if _, err := MasksDir(masks, pngpair.ReadMask)("a", "../../etc/passwd"); err == nil {
		t.Error("escaping id accepted")
	}
}

func readPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestTruncateDrawsInTheFont: a shortened name keeps its end and uses only
// characters the sheets' 7-pixel font has (a "…" was drawn as a box).
func TestTruncateDrawsInTheFont(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"unetr-small", 20, "unetr-small"},
		{"resnet50-unet-small+crop", 12, "..small+crop"},
		{"resnet50-unet-small-crop", 12, "..small-crop"},
		{"abcdef", 2, "ef"},
	} {
		got := truncate(c.in, c.n)
		if got != c.want || len(got) > c.n {
			t.Errorf("truncate(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
		for _, r := range got {
			if _, ok := basicfont.Face7x13.GlyphAdvance(r); !ok || r > 126 {
				t.Errorf("truncate(%q, %d) = %q: %q is not in the font", c.in, c.n, got, r)
			}
		}
	}
}

// TestWriteWithoutTruth: a replay without ground truth (DICOM without
// masks) gets a page that says so, and no "ground truth outline" legend.
func TestWriteWithoutTruth(t *testing.T) {
	rep := &replay.Report{ReplayID: "r-none", Ingested: 2, Models: map[string]score.ModelSummary{}}
	agg := score.NewAggregator()
	for _, id := range []string{"s1", "s2"} {
		rep.Slices = append(rep.Slices, replay.SliceResult{ID: id, Model: "a", Predicted: 5})
	}
	rep.Models = agg.Summary()
	rep.Models["a"] = score.ModelSummary{}
	out := t.TempDir()
	if _, err := Write(out, rep, Pixels{}, Options{Tile: 64}); err != nil {
		t.Fatal(err)
	}
	html, err := os.ReadFile(filepath.Join(out, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(html), "ground truth outline") || !strings.Contains(string(html), `id="no-truth"`) {
		t.Errorf("page without truth:\n%s", html)
	}
}

// TestWriteNodules: the page lists the replay's nodules (per series and
// model), says when findings may be incomplete, and draws each model's
// size-category table.
func TestWriteNodules(t *testing.T) {
	p := 0.8
	rep := &replay.Report{ReplayID: "r-nod", Ingested: 3, Models: map[string]score.ModelSummary{"a": {}},
		Slices: []replay.SliceResult{{ID: "0", Model: "a"}, {ID: "1", Model: "a"}},
		Nodules: []replay.Nodule{{ID: "f-1", Model: "a", Series: "input:0:x.pkl", FirstSlice: "0", LastSlice: "2", Slices: 3,
			DiameterMm: 12.34, SpacingAssumed: true, VolumeMm3: 321, ThicknessAssumed: true, Category: "LR4A", Label: "LR4A", MeanProb: &p}},
		FindingsNote: "the findings stage did not answer",
		Categories: map[string]replay.CategoryTable{"a": {Labels: []string{"LR3"}, Estimates: []string{"none", "LR2", "LR3", "LR4A", "LR4B"},
			Counts: [][]int{{0, 0, 7, 1, 0}}, Agree: 7, Total: 8}}}
	out := t.TempDir()
	if _, err := Write(out, rep, Pixels{}, Options{Tile: 64}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	html := string(b)
	for _, want := range []string{`id="nodules"`, "input:0:x.pkl", "12.3*", "321*", "LR4A", "0.80", `id="findings-note"`,
		"7 of 8 labelled slices agree", "<td>LR3</td><td>0</td><td>0</td><td>7</td>"} {
		if !strings.Contains(html, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}
