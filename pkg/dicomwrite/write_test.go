package dicomwrite

import (
	"math"
	"strconv"
	"testing"
)

func TestFormatDS(t *testing.T) {
	for _, v := range []float64{0, 0.7, -1024, 0.1 + 0.2, 1e-12, -123456789.123456, 1e300, 0.703125} {
		s := formatDS(v)
		if len(s) > 16 {
			t.Errorf("formatDS(%v) = %q is longer than 16", v, s)
		}
		back, err := strconv.ParseFloat(s, 64)
		if err != nil || math.Abs(back-v) > 1e-9*math.Max(1, math.Abs(v)) {
			t.Errorf("formatDS(%v) = %q reads back as %v", v, s, back)
		}
	}
}
