package pickle

import (
	"encoding/binary"
	"math"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// chunkBytes is the size of the reads of the fast path: small enough that
// a chunk is still in the CPU cache when it is converted, large enough that
// the calls cost nothing (16 reads for a 512×512 float64 slice). A
// variable so that the tests can make rows span many chunks.
var chunkBytes = 128 << 10

// fastItem decodes row i for Item without the float64 detour of row: the
// hu_array_old bytes go straight to int16 and the mask bytes straight into
// the mask, read in chunks into one reused buffer. It handles the layout
// the dataset and the Go writer use (raw bytes payloads; C order; HU as
// little-endian float64 or float32; mask of a 1-byte integer or bool
// dtype) and declines (ok false) everything else, and any row with a
// problem: a wrong size, a read error, a non-finite HU, a mask byte other
// than 0 and 1. Item then decodes
// the row the general way, which gives the typed errors, so the fast path
// never has to reproduce them.
func (f *File) fastItem(i int) (label string, hu *imgx.HU, mask *imgx.Mask, ok bool) {
	label, hu, mask, _, ok = f.fastItemClamped(i)
	return label, hu, mask, ok
}

// fastItemClamped is fastItem that also counts the HU values outside the
// int16 range (clamped).
func (f *File) fastItemClamped(i int) (label string, hu *imgx.HU, mask *imgx.Mask, cl clamped, ok bool) {
	if f.label != nil {
		s, err := f.text(f.label[i])
		if err != nil {
			return "", nil, nil, cl, false
		}
		label = s
	}
	ha, rows, cols, ok := fastCell(f.hu[i])
	if !ok || ha.dtype.kind != 'f' || (ha.dtype.size != 8 && ha.dtype.size != 4) || ha.dtype.order != binary.LittleEndian {
		return "", nil, nil, cl, false
	}
	hs := ha.data.(*span)
	n := rows * cols
	if hs.n != int64(n*ha.dtype.size) {
		return "", nil, nil, cl, false
	}
	if f.mask != nil {
		ma, mr, mc, ok := fastCell(f.mask[i])
		if !ok || ma.dtype.size != 1 || (ma.dtype.kind != 'i' && ma.dtype.kind != 'u' && ma.dtype.kind != 'b') ||
			mr != rows || mc != cols {
			return "", nil, nil, cl, false
		}
		ms := ma.data.(*span)
		if ms.n != int64(n) {
			return "", nil, nil, cl, false
		}
		mask = &imgx.Mask{Rows: rows, Cols: cols, Pix: make([]uint8, n)}
		if _, err := f.r.ReadAt(mask.Pix, ms.off); err != nil {
			return "", nil, nil, cl, false
		}
		if !maskIs01(mask.Pix) {
			return "", nil, nil, cl, false // the general path names the value
		}
	}
	hu = &imgx.HU{Rows: rows, Cols: cols, Pix: make([]int16, n)}
	sz := ha.dtype.size
	per := max(1, chunkBytes/sz) // elements a chunk
	if cap(f.buf) < per*sz {
		f.buf = make([]byte, per*sz)
	}
	for k := 0; k < n; k += per {
		m := min(per, n-k)
		b := f.buf[:m*sz]
		if _, err := f.r.ReadAt(b, hs.off+int64(k*sz)); err != nil {
			return "", nil, nil, cl, false
		}
		if sz == 8 {
			ok = huFromF8(hu.Pix[k:k+m], b, &cl, k)
		} else {
			ok = huFromF4(hu.Pix[k:k+m], b, &cl, k)
		}
		if !ok {
			return "", nil, nil, cl, false
		}
	}
	return label, hu, mask, cl, true
}

// fastCell returns the array of a cell the fast path may read: a usable
// numeric 2-D array in C order within imgx.MaxSide whose data is a raw
// bytes payload in the file.
func fastCell(cell any) (a *ndarray, rows, cols int, ok bool) {
	a, ok = cell.(*ndarray)
	if !ok || a.usable() != nil || a.dtype.kind == 'O' || a.fortran || len(a.shape) != 2 {
		return nil, 0, 0, false
	}
	rows, cols = a.shape[0], a.shape[1]
	if imgx.CheckSize(rows, cols) != nil {
		return nil, 0, 0, false
	}
	if s, isSpan := a.data.(*span); !isSpan || s.enc != encRaw {
		return nil, 0, 0, false
	}
	return a, rows, cols, true
}

// expBits64 and expBits32 are the exponent fields; all ones is NaN or ±Inf.
const (
	expBits64 = 0x7ff << 52
	expBits32 = 0xff << 23
)

// huFromF8 converts little-endian float64s to HU as imgx.HUFromFloat does
// (rounded half away from zero, clamped to int16). It returns false at the
// first non-finite value. Four values a step through array pointers, so
// that there is one bounds check a step and one branch for the four
// finiteness checks; the tail goes one by one.
func huFromF8(dst []int16, b []byte, cl *clamped, at int) bool {
	b = b[:8*len(dst)]
	k := 0
	for ; k+4 <= len(dst); k += 4 {
		c := (*[32]byte)(b[8*k:])
		u0 := binary.LittleEndian.Uint64(c[0:8])
		u1 := binary.LittleEndian.Uint64(c[8:16])
		u2 := binary.LittleEndian.Uint64(c[16:24])
		u3 := binary.LittleEndian.Uint64(c[24:32])
		if u0&expBits64 == expBits64 || u1&expBits64 == expBits64 || u2&expBits64 == expBits64 || u3&expBits64 == expBits64 {
			return false
		}
		x0, x1, x2, x3 := math.Float64frombits(u0), math.Float64frombits(u1), math.Float64frombits(u2), math.Float64frombits(u3)
		if outside(x0) || outside(x1) || outside(x2) || outside(x3) {
			cl.add(x0, at+k)
			cl.add(x1, at+k+1)
			cl.add(x2, at+k+2)
			cl.add(x3, at+k+3)
		}
		d := (*[4]int16)(dst[k:])
		d[0] = roundInt16(x0)
		d[1] = roundInt16(x1)
		d[2] = roundInt16(x2)
		d[3] = roundInt16(x3)
	}
	for ; k < len(dst); k++ {
		u := binary.LittleEndian.Uint64(b[8*k:])
		if u&expBits64 == expBits64 {
			return false
		}
		x := math.Float64frombits(u)
		cl.add(x, at+k)
		dst[k] = roundInt16(x)
	}
	return true
}

// huFromF4 is huFromF8 for little-endian float32s.
func huFromF4(dst []int16, b []byte, cl *clamped, at int) bool {
	b = b[:4*len(dst)]
	for k := range dst {
		u := binary.LittleEndian.Uint32(b)
		b = b[4:]
		if u&expBits32 == expBits32 {
			return false
		}
		x := float64(math.Float32frombits(u))
		cl.add(x, at+k)
		dst[k] = roundInt16(x)
	}
	return true
}

// Values that round (half away from zero) outside the int16 range.
const (
	minHU = math.MinInt16 - 0.5 // -32768.5 rounds to -32769
	maxHU = math.MaxInt16 + 0.5 // 32767.5 rounds to 32768
)

// outside reports whether x rounds to a value outside the int16 range.
func outside(x float64) bool { return x <= minHU || x >= maxHU }

// clamped counts the HU values outside the int16 range that the
// conversion clamps, and keeps the first of them.
type clamped struct {
	n     int
	first int
	val   float64
}

// add counts x, at pixel k, when it is outside the range.
func (c *clamped) add(x float64, k int) {
	if !outside(x) {
		return
	}
	if c.n == 0 {
		c.first, c.val = k, x
	}
	c.n++
}

// maskIs01 reports whether every byte of a 1-byte mask is 0 or 1, eight
// bytes at a time.
func maskIs01(p []uint8) bool {
	const high = 0xfefefefefefefefe
	var acc uint64
	for len(p) >= 8 {
		acc |= binary.LittleEndian.Uint64(p)
		p = p[8:]
	}
	for _, v := range p {
		acc |= uint64(v)
	}
	return acc&high == 0
}

// halfDown is the double just below 0.5.
const halfDown = 0.49999999999999994

// roundInt16 is imgx.HUFromFloat's conversion of one finite value:
// math.Round (half away from zero), then clamping to int16. Clamping first
// gives the same result (both are monotone and the bounds are integers).
// In that range, truncating x+±halfDown rounds half away from zero: a tie
// n+0.5 gives n+1-2⁻⁵⁴, which rounds up to n+1 since the spacing of the
// doubles there is at least 2⁻⁵², and anything below a tie stays below
// n+1 (adding 0.5 instead would turn 0.49999999999999994 into 1).
// TestRoundInt16 checks it against imgx. Four float instructions and two
// rarely taken branches, where math.Round branches on the exponent.
func roundInt16(x float64) int16 {
	if x < math.MinInt16 {
		x = math.MinInt16
	}
	if x > math.MaxInt16 {
		x = math.MaxInt16
	}
	return int16(int32(x + math.Copysign(halfDown, x)))
}
