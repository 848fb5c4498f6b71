package imgx_test

import (
	"math"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
)

func TestResizeBilinearHalvingAveragesBlocks(t *testing.T) {
	src := make([]float32, 4*6)
	for i := range src {
		src[i] = float32(i * i % 17)
	}
	got := imgx.ResizeBilinear(src, 4, 6, 2, 3)
	for y := 0; y < 2; y++ {
		for x := 0; x < 3; x++ {
			want := (src[(2*y)*6+2*x] + src[(2*y)*6+2*x+1] + src[(2*y+1)*6+2*x] + src[(2*y+1)*6+2*x+1]) / 4
			if math.Abs(float64(got[y*3+x]-want)) > 1e-5 {
				t.Fatalf("(%d,%d) = %v, want block mean %v", y, x, got[y*3+x], want)
			}
		}
	}
}

func TestResizeBilinearKeepsConstantsAndRamps(t *testing.T) {
	// A horizontal ramp stays a ramp inside the image when upsampled 2×.
	src := []float32{0, 1, 2, 3}
	got := imgx.ResizeBilinear(src, 1, 4, 1, 8)
	want := []float32{0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3}
	for i := range want {
		if math.Abs(float64(got[i]-want[i])) > 1e-6 {
			t.Fatalf("got %v want %v", got, want)
		}
	}
	c := make([]float32, 9*7)
	for i := range c {
		c[i] = 5
	}
	for _, v := range imgx.ResizeBilinear(c, 9, 7, 13, 4) {
		if v != 5 {
			t.Fatalf("constant not kept: %v", v)
		}
	}
}

func TestResizeNearestKeepsBinaryAndPosition(t *testing.T) {
	m := imgx.NewMask(8, 8)
	m.Pix[2*8+5] = 1
	up := imgx.ResizeNearest(m, 16, 16)
	if up.Count() != 4 || up.Pix[4*16+10] != 1 || up.Pix[5*16+11] != 1 {
		t.Fatalf("upsampled pixel misplaced: count %d", up.Count())
	}
	down := imgx.ResizeNearest(up, 8, 8)
	for i := range m.Pix {
		if down.Pix[i] != m.Pix[i] {
			t.Fatalf("down(up(m)) != m at %d", i)
		}
	}
}
