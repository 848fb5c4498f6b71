package replay_test

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/score"
)

// TestReportJSON round-trips a report through JSON, as replay --report
// writes it and lungseg report reads it, and checks the keys of the
// headline, the size bins, the empty-truth counts and each slice's truth
// diameter.
func TestReportJSON(t *testing.T) {
	agg := score.NewAggregator()
	agg.Add("m", "LR3", score.Metrics{Dice: 0.5, IoU: 1.0 / 3, Truth: 10, Predicted: 10, TruthDiameterMm: 7.5})
	agg.Add("m", "LR2", score.Metrics{Dice: 0, Predicted: 4})
	agg.Add("m", "LR2", score.Metrics{Dice: 1, IoU: 1, BothEmpty: true})
	rep := &replay.Report{ReplayID: "r", Inputs: []string{"in"}, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Ingested: 3,
		Models: agg.Summary(),
		Slices: []replay.SliceResult{
			{ID: "1", Model: "m", Label: "LR3", HasTruth: true, Dice: 0.5, IoU: 1.0 / 3, Truth: 10, Predicted: 10, TruthDiameterMm: 7.5},
			{ID: "2", Model: "m", Label: "LR2", HasTruth: true, Predicted: 4},
			{ID: "3", Model: "m", Label: "LR2", HasTruth: true, Dice: 1, IoU: 1, BothEmpty: true},
		}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back replay.Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, rep) {
		t.Errorf("round trip\n%+v\nwant\n%+v", back, *rep)
	}
	var raw struct {
		Models map[string]map[string]json.RawMessage `json:"models"`
		Slices []map[string]any                      `json:"slices"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	// Pooled: TP 5 of 10 truth and 14 predicted pixels.
	want := map[string]string{"slices": "3", "with_truth": "1", "empty_clean": "1", "empty_fp": "1",
		"mean_dice": `{"mean":0.5,"sd":0,"n":1}`, "dice_pooled": "0.4166666666666667"}
	for k, v := range want {
		if got := string(raw.Models["m"][k]); got != v {
			t.Errorf("models.m.%s = %s, want %s", k, got, v)
		}
	}
	var bins []score.SizeBin
	if err := json.Unmarshal(raw.Models["m"]["by_size"], &bins); err != nil {
		t.Fatal(err)
	}
	wantBins := []score.SizeBin{{Label: "<6", MaxMm: 6}, {Label: "6-10", MinMm: 6, MaxMm: 10, Dice: score.Stat{Mean: 0.5, N: 1}},
		{Label: "10-20", MinMm: 10, MaxMm: 20}, {Label: ">20", MinMm: 20}}
	if !reflect.DeepEqual(bins, wantBins) {
		t.Errorf("by_size %+v, want %+v", bins, wantBins)
	}
	if d, ok := raw.Slices[0]["truth_diameter_mm"]; !ok || d != 7.5 {
		t.Errorf("slice 1 truth_diameter_mm %v (%v)", d, ok)
	}
	if _, ok := raw.Slices[1]["truth_diameter_mm"]; ok {
		t.Errorf("slice 2 without truth pixels has truth_diameter_mm")
	}
}
