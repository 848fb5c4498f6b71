package report

import (
	"encoding/json"
	"image/color"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/overlay"
	"github.com/lungseg/lungseg/score"
)

// TestPageHeadline writes the page of a report read back from JSON, as
// lungseg report reads it, and checks the scores table: its columns in
// order, and one model's cells (the mean over slices with truth, the size
// bins, the empty-truth counts and the pooled Dice) against values worked
// out by hand. The histogram leaves the empty-truth slices out.
func TestPageHeadline(t *testing.T) {
	type sl struct {
		id             string
		dice, diameter float64
		truth, pred    int
	}
	in := []sl{
		{"s1", 0.6, 4, 10, 10},  // <6
		{"s2", 0.8, 12, 40, 40}, // 10-20
		{"s3", 1, 0, 0, 0},      // empty, clean
		{"s4", 0, 0, 0, 5},      // empty, FP
		{"s5", 0.75, 25, 10, 6}, // >20
	}
	agg := score.NewAggregator()
	rep := &replay.Report{ReplayID: "r-head"}
	for _, s := range in {
		rep.Slices = append(rep.Slices, replay.SliceResult{ID: s.id, Model: "a", HasTruth: true, Dice: s.dice,
			Truth: int64(s.truth), Predicted: int64(s.pred), TruthDiameterMm: s.diameter, BothEmpty: s.truth+s.pred == 0})
		agg.Add("a", "", score.Metrics{Dice: s.dice, Truth: s.truth, Predicted: s.pred, TruthDiameterMm: s.diameter, BothEmpty: s.truth+s.pred == 0})
	}
	rep.Models = agg.Summary()
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back replay.Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	w, err := Write(dir, &back, Pixels{}, Options{Bins: 20})
	if err != nil {
		t.Fatal(err)
	}
	html, err := os.ReadFile(filepath.Join(dir, w.Page))
	if err != nil {
		t.Fatal(err)
	}
	page := string(html)
	th := regexp.MustCompile(`<th>([^<]*)</th>`)
	var head []string
	table := page[strings.Index(page, `<table id="scores">`):]
	table = table[:strings.Index(table, "</table>")]
	for _, m := range th.FindAllStringSubmatch(table, -1) {
		head = append(head, m[1])
	}
	wantHead := []string{"model", "slices", "with truth", "Dice mean (truth&gt;0)", "Dice &lt;6 mm", "Dice 6-10 mm", "Dice 10-20 mm",
		"Dice &gt;20 mm", "empty truth: clean", "empty truth: FP", "Dice pooled", "IoU pooled", "RMSE"}
	if !reflect.DeepEqual(head, wantHead) {
		t.Errorf("columns %q\nwant %q", head, wantHead)
	}
	row := table[strings.Index(table, `data-model="a"`):]
	row = row[:strings.Index(row, "</tr>")]
	td := regexp.MustCompile(`<td[^>]*>(?:<span[^>]*></span>)?([^<]*)</td>`)
	var cells []string
	for _, m := range td.FindAllStringSubmatch(row, -1) {
		cells = append(cells, m[1])
	}
	// Mean of 0.6, 0.8, 0.75 = 0.7166…, sd 0.0850; pooled 2·44/(60+61).
	want := []string{"a", "5", "3", "0.717 ± 0.085", "0.600 (1)", "-", "0.800 (1)", "0.750 (1)", "1", "1", "0.727"}
	if len(cells) < len(want) || !reflect.DeepEqual(cells[:len(want)], want) {
		t.Errorf("row %q\nwant %q…", cells, want)
	}

	// Histogram: the bins of Dice 0 (s4) and 1 (s3) stay empty.
	h := readPNG(t, filepath.Join(dir, w.Histograms["a"]))
	plotW := histW - marginL - 12
	ca := overlay.ColorOf("a")
	bar := func(bin int) int {
		x, n := marginL+bin*plotW/20+2, 0
		for y := 0; y < histH; y++ {
			if color.RGBAModel.Convert(h.At(x, y)).(color.RGBA) == ca {
				n++
			}
		}
		return n
	}
	if bar(0) != 0 || bar(19) != 0 || bar(12) == 0 || bar(16) == 0 || bar(15) == 0 {
		t.Errorf("histogram bars: bin 0 %d, 12 %d, 15 %d, 16 %d, 19 %d px", bar(0), bar(12), bar(15), bar(16), bar(19))
	}
}
