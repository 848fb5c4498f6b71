package pickle

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// huFixture is testdata/hu_int16.json (see make_hu_fixture.py).
type huFixture struct {
	Rows []struct {
		Label   string `json:"label"`
		Shape   []int  `json:"shape"`
		Fast    bool   `json:"fast"`
		Error   string `json:"error"`
		HUSHA   string `json:"hu_int16_sha256"`
		MaskSHA string `json:"mask_sha256"`
	} `json:"rows"`
}

func sha16(p []int16) string {
	b := make([]byte, 2*len(p))
	for i, v := range p {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(v))
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func sha8(p []uint8) string {
	s := sha256.Sum256(p)
	return hex.EncodeToString(s[:])
}

// TestFastPathMatchesNumpy decodes hu_int16.pkl, whose HU hold rounding
// and clamping edge cases in float64 and float32, and checks the int16 HU
// and masks of the fast path (and of Item, which uses it or, for the rows
// the fast path leaves, the general path) against what numpy computed in
// make_hu_fixture.py, with reads of one element to the default size.
func TestFastPathMatchesNumpy(t *testing.T) {
	b, err := os.ReadFile("testdata/hu_int16.json")
	if err != nil {
		t.Fatal(err)
	}
	var want huFixture
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if len(want.Rows) < 7 {
		t.Fatalf("hu_int16.json lists %d rows", len(want.Rows))
	}
	def := chunkBytes
	t.Cleanup(func() { chunkBytes = def })
	for _, chunk := range []int{1, 56, 1000, def} {
		chunkBytes = chunk
		f, err := Open("testdata/hu_int16.pkl")
		if err != nil {
			t.Fatal(err)
		}
		if f.Len() != len(want.Rows) {
			t.Fatalf("%d rows, want %d", f.Len(), len(want.Rows))
		}
		for i, w := range want.Rows {
			label, hu, mask, ok := f.fastItem(i)
			if ok != (w.Fast && w.Error == "") {
				t.Errorf("chunk %d row %d: fast path ok %v, want %v", chunk, i, ok, w.Fast && w.Error == "")
			}
			if ok {
				if label != w.Label || hu.Rows != w.Shape[0] || hu.Cols != w.Shape[1] || mask.Rows != hu.Rows || mask.Cols != hu.Cols {
					t.Errorf("chunk %d row %d: %q %d×%d, want %q %v", chunk, i, label, hu.Rows, hu.Cols, w.Label, w.Shape)
				}
				if sha16(hu.Pix) != w.HUSHA {
					t.Errorf("chunk %d row %d: fast HU differs from numpy's", chunk, i)
				}
				if sha8(mask.Pix) != w.MaskSHA {
					t.Errorf("chunk %d row %d: fast mask differs from numpy's", chunk, i)
				}
			}
			it := f.Item(i)
			if w.Error != "" {
				var re *RowError
				if !errors.As(it.Err, &re) || re.Row != i || !strings.Contains(it.Err.Error(), w.Error) || it.HU != nil {
					t.Errorf("chunk %d row %d: Item error %v, want a RowError with %q", chunk, i, it.Err, w.Error)
				}
				continue
			}
			if it.Err != nil {
				t.Errorf("chunk %d row %d: %v", chunk, i, it.Err)
				continue
			}
			if it.Meta.Label != w.Label || sha16(it.HU.Pix) != w.HUSHA || sha8(it.Mask.Pix) != w.MaskSHA {
				t.Errorf("chunk %d row %d: Item differs from numpy's", chunk, i)
			}
		}
		f.Close()
	}
}

// TestRoundInt16 checks the fast path's rounding against
// imgx.HUFromFloat's on edge cases and random values and bit patterns.
func TestRoundInt16(t *testing.T) {
	vals := []float64{0, math.Copysign(0, -1), 0.5, -0.5, 1.5, -1.5, 2.5, -2.5,
		math.Nextafter(0.5, 0), -math.Nextafter(0.5, 0), math.Nextafter(1.5, 0), math.Nextafter(-1.5, 0),
		32766.5, 32767, 32767.49, 32767.5, 32768, -32767.5, -32768, -32768.49, -32768.5, -32769,
		1 << 52, -(1 << 52), 1<<52 + 0.5 + 1<<51, math.MaxFloat64, -math.MaxFloat64,
		math.SmallestNonzeroFloat64, -math.SmallestNonzeroFloat64, 4503599627370495.5}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		vals = append(vals, rng.Float64()*90000-45000, float64(rng.IntN(80000)-40000)+0.5,
			math.Float64frombits(rng.Uint64()))
	}
	for _, x := range vals {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			continue
		}
		want, err := imgx.HUFromFloat(1, 1, []float64{x})
		if err != nil {
			t.Fatal(err)
		}
		if got := roundInt16(x); got != want.Pix[0] {
			t.Fatalf("roundInt16(%v) = %d, imgx.HUFromFloat gives %d", x, got, want.Pix[0])
		}
	}
}

// TestHUFromFloatsDeclineNonFinite checks that the converters stop at NaN
// and ±Inf in any position, whatever their sign or payload bits.
func TestHUFromFloatsDeclineNonFinite(t *testing.T) {
	bad64 := []float64{math.NaN(), math.Inf(1), math.Inf(-1), math.Float64frombits(0xfff0000000000001)}
	bad32 := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), math.Float32frombits(0x7f800001)}
	for _, pos := range []int{0, 1, 2, 3, 5, 6, 7, 8, 9} {
		for k := range bad64 {
			b8, b4 := make([]byte, 80), make([]byte, 40)
			for j := range 10 {
				binary.LittleEndian.PutUint64(b8[8*j:], math.Float64bits(float64(j)))
				binary.LittleEndian.PutUint32(b4[4*j:], math.Float32bits(float32(j)))
			}
			binary.LittleEndian.PutUint64(b8[8*pos:], math.Float64bits(bad64[k]))
			binary.LittleEndian.PutUint32(b4[4*pos:], math.Float32bits(bad32[k]))
			if huFromF8(make([]int16, 10), b8, &clamped{}, 0) || huFromF4(make([]int16, 10), b4, &clamped{}, 0) {
				t.Errorf("value %d at %d accepted", k, pos)
			}
		}
	}
	b8 := make([]byte, 80)
	binary.LittleEndian.PutUint64(b8[8*9:], math.Float64bits(-1e300))
	dst := make([]int16, 10)
	var cl clamped
	if !huFromF8(dst, b8, &cl, 100) || dst[9] != math.MinInt16 {
		t.Errorf("finite values refused or converted to %v", dst)
	}
	if cl != (clamped{n: 1, first: 109, val: -1e300}) {
		t.Errorf("clamped %+v, want one at pixel 109", cl)
	}
}

// BenchmarkHUFromF8 converts one 512×512 float64 slice.
func BenchmarkHUFromF8(b *testing.B) {
	const n = 512 * 512
	raw := make([]byte, 8*n)
	for k := range n {
		binary.LittleEndian.PutUint64(raw[8*k:], math.Float64bits(float64(k%3000-1024)))
	}
	dst := make([]int16, n)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if !huFromF8(dst, raw, &clamped{}, 0) {
			b.Fatal("refused")
		}
	}
}

// TestMaskIs01 checks maskIs01 against a byte-by-byte check on every byte
// value in every position of a word and on lengths that leave a tail.
func TestMaskIs01(t *testing.T) {
	for n := range 20 {
		for pos := range n {
			for v := range 256 {
				p := make([]uint8, n)
				for k := range p {
					p[k] = uint8(k * 37 % 2) // zeros and ones around
				}
				p[pos] = uint8(v)
				if got := maskIs01(p); got != (v <= 1) {
					t.Fatalf("n %d, %d at %d: maskIs01 %v", n, v, pos, got)
				}
			}
		}
	}
}
