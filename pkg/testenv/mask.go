package testenv

import "github.com/lungseg/lungseg/pkg/imgx"

// MaskOf parses a mask drawn as rows of '#' (set) and '.' (clear), for
// tests of code that reads masks.
func MaskOf(rows ...string) *imgx.Mask {
	m := imgx.NewMask(len(rows), len(rows[0]))
	for r, s := range rows {
		for c, ch := range s {
			if ch == '#' {
				m.Pix[r*m.Cols+c] = 1
			}
		}
	}
	return m
}
