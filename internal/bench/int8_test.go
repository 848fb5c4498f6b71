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
