package bench

import (
	"fmt"
	"slices"
)

// Spread is a figure's samples summarised: the smallest, the median and the
// largest, and how many there were. Targets are judged on Median; Min and
// Max say how far one round or one run can stray on a shared machine.
type Spread struct {
	Min    float64 `json:"min"`
	Median float64 `json:"median"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// spreadOf summarises xs (the zero Spread for none); xs is not changed.
func spreadOf(xs []float64) Spread {
	if len(xs) == 0 {
		return Spread{}
	}
	return Spread{Min: slices.Min(xs), Median: median(xs), Max: slices.Max(xs), N: len(xs)}
}

// scaled multiplies every figure by k (k > 0 keeps the order; k < 0
// swaps Min and Max).
func (s Spread) scaled(k float64) Spread {
	out := Spread{Min: s.Min * k, Median: s.Median * k, Max: s.Max * k, N: s.N}
	if k < 0 {
		out.Min, out.Max = out.Max, out.Min
	}
	return out
}

// RelSpread is (Max−Min)/Median: 0.1 means the samples lie within 10 % of
// the median's size (0 when the median is 0).
func (s Spread) RelSpread() float64 { return ratio(s.Max-s.Min, s.Median) }

// format prints "median [min–max]" with prec decimals ("-" for no samples).
func (s Spread) format(prec int) string {
	if s.N == 0 {
		return "-"
	}
	if s.N == 1 {
		return fmt.Sprintf("%.*f", prec, s.Median)
	}
	return fmt.Sprintf("%.*f [%.*f–%.*f]", prec, s.Median, prec, s.Min, prec, s.Max)
}

// ratios are a[i]/b[i] for the rounds both sides have (paired rounds).
func ratios(a, b []float64) []float64 {
	var out []float64
	for i := 0; i < min(len(a), len(b)); i++ {
		if q := ratio(a[i], b[i]); q != 0 {
			out = append(out, q)
		}
	}
	return out
}
