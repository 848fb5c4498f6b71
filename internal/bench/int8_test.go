package bench

import (
	"bytes"
	"strings"
	"testing"
)

// TestInt8RowsAndTarget: an int8 variant's row is printed beside its float
// model's time with the ratio, and its card's validation Dice loss is
// judged against 0.01 (met and not met).
func TestInt8RowsAndTarget(t *testing.T) {
	small, big := 0.002, 0.03
	rep := &Report{Inference: []Inference{
		{Model: "m", Threads: 1, Go: Side{Batch1Ms: 20}},
		{Model: "m-int8", Threads: 1, Go: Side{Batch1Ms: 12}, FloatModel: "m", RatioFloat: 0.6, ValDiceLossCard: &small},
		{Model: "n-int8", Threads: 2, Go: Side{Batch1Ms: 5}, FloatModel: "n", RatioFloat: 0.5, ValDiceLossCard: &big},
	}}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	var row string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "m-int8 ") && strings.Contains(l, "+0.0020") {
			row = l
		}
	}
	if f := strings.Fields(row); len(f) < 7 || f[1] != "1" || f[2] != "m" || f[3] != "12.0" || f[4] != "20.0" || f[5] != "0.60" {
		t.Errorf("int8 row %q in\n%s", row, out)
	}
	met := map[string]bool{}
	for _, tg := range targets(rep) {
		met[tg.Name] = tg.Met
	}
	if m, ok := met["int8 m-int8, 1 thread(s)"]; !ok || !m {
		t.Errorf("m-int8 target %v %v, want met", m, ok)
	}
	if m, ok := met["int8 n-int8, 2 thread(s)"]; !ok || m {
		t.Errorf("n-int8 target %v %v, want not met", m, ok)
	}
}

// TestRLETargetNeverDropped: the RLE decompression target is judged when
// Go's net is positive, and printed as not measured (not met, value 0)
// when the difference of medians falls to zero or below, never left out.
func TestRLETargetNeverDropped(t *testing.T) {
	for _, c := range []struct {
		net, dcmtk float64
		met        bool
		value      float64
	}{{0.2, 2.0, true, 10}, {0.2, 0.1, false, 0.5}, {-0.48, 4.5, false, 0}, {0, 4.5, false, 0}} {
		rle := &RLECompare{Name: "s (RLE)", GoNetMs: c.net, DcmtkNetMs: c.dcmtk, Speedup: ratio(c.dcmtk, c.net)}
		var found []Target
		for _, tg := range targets(&Report{Decode: &Decode{RLE: rle}}) {
			if strings.HasPrefix(tg.Name, "RLE decompression") {
				found = append(found, tg)
			}
		}
		if len(found) != 1 {
			t.Fatalf("net %v: %d RLE targets, want 1", c.net, len(found))
		}
		if tg := found[0]; tg.Met != c.met || tg.Value != c.value {
			t.Errorf("net %v: met %v value %v, want %v %v (%s)", c.net, tg.Met, tg.Value, c.met, c.value, tg.Note)
		}
		if c.net <= 0 && !strings.Contains(found[0].Note, "not measured") {
			t.Errorf("net %v: note %q", c.net, found[0].Note)
		}
	}
}
