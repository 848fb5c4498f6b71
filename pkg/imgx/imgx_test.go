package imgx_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
)

func TestPackBitsRoundTrip(t *testing.T) {
	for _, sz := range [][2]int{{1, 1}, {3, 5}, {512, 512}, {7, 9}} {
		r := rand.New(rand.NewPCG(1, uint64(sz[0])))
		m := imgx.NewMask(sz[0], sz[1])
		for i := range m.Pix {
			if r.IntN(3) == 0 {
				m.Pix[i] = 1
			}
		}
		got, err := imgx.UnpackMask(sz[0], sz[1], m.PackBits())
		if err != nil {
			t.Fatal(err)
		}
		for i := range m.Pix {
			if got.Pix[i] != m.Pix[i] {
				t.Fatalf("%v: pixel %d: got %d want %d", sz, i, got.Pix[i], m.Pix[i])
			}
		}
	}
}

func TestHUFromFloatRejectsNaN(t *testing.T) {
	v := []float64{0, 1, math.NaN(), 3}
	if _, err := imgx.HUFromFloat(2, 2, v); err == nil {
		t.Fatal("NaN accepted")
	}
	if _, err := imgx.HUFromFloat(2, 2, v[:3]); !errors.Is(err, imgx.ErrShape) {
		t.Fatalf("short data: got %v, want ErrShape", err)
	}
	if _, err := imgx.HUFromFloat(100000, 100000, nil); err == nil {
		t.Fatal("huge size accepted")
	}
	h, err := imgx.HUFromFloat(1, 3, []float64{-1e9, 12.6, 1e9})
	if err != nil {
		t.Fatal(err)
	}
	if h.Pix[0] != math.MinInt16 || h.Pix[1] != 13 || h.Pix[2] != math.MaxInt16 {
		t.Fatalf("clamping/rounding wrong: %v", h.Pix)
	}
}

func TestHUEncodeRoundTrip(t *testing.T) {
	h := imgx.NewHU(3, 4)
	for i := range h.Pix {
		h.Pix[i] = int16(i*300 - 2000)
	}
	got, err := imgx.DecodeHU(3, 4, h.EncodeInt16())
	if err != nil {
		t.Fatal(err)
	}
	for i := range h.Pix {
		if got.Pix[i] != h.Pix[i] {
			t.Fatalf("pixel %d: %d != %d", i, got.Pix[i], h.Pix[i])
		}
	}
	if _, err := imgx.DecodeHU(3, 5, h.EncodeInt16()); err == nil {
		t.Fatal("wrong shape accepted")
	}
}
