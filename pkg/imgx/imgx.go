// Package imgx holds the pixel types shared by the stages: CT slices in
// Hounsfield units, binary masks and float maps, with their compact wire
// encodings, and the geometry of a mask's 8-connected components
// (labelling, longest diameter) that findings and score both measure. The
// types follow Go's image package: a flat Pix slice in row-major order
// plus the dimensions.
package imgx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// MaxSide bounds the rows and columns any decoder accepts before it
// allocates. CT slices are 512×512 and rarely 1024×1024.
const MaxSide = 4096

// ErrShape reports pixel data whose length does not match its dimensions.
var ErrShape = errors.New("imgx: pixel data does not match shape")

// CheckSize returns an error when rows×cols is not a plausible image size.
func CheckSize(rows, cols int) error {
	if rows <= 0 || cols <= 0 {
		return fmt.Errorf("imgx: bad size %d×%d", rows, cols)
	}
	if rows > MaxSide || cols > MaxSide {
		return fmt.Errorf("imgx: size %d×%d exceeds the %d-pixel limit per side", rows, cols, MaxSide)
	}
	return nil
}

// HU is a CT slice in Hounsfield units.
type HU struct {
	Rows, Cols int
	Pix        []int16
}

// NewHU allocates a slice of the given size filled with air (-1024 HU).
func NewHU(rows, cols int) *HU {
	h := &HU{Rows: rows, Cols: cols, Pix: make([]int16, rows*cols)}
	for i := range h.Pix {
		h.Pix[i] = -1024
	}
	return h
}

// At returns the HU value at row r, column c.
func (h *HU) At(r, c int) int16 { return h.Pix[r*h.Cols+c] }

// HUFromFloat converts float HU values to int16, rejecting NaN and
// infinities and clamping to the int16 range.
func HUFromFloat(rows, cols int, v []float64) (*HU, error) {
	if err := CheckSize(rows, cols); err != nil {
		return nil, err
	}
	if len(v) != rows*cols {
		return nil, fmt.Errorf("%w: %d values for %d×%d", ErrShape, len(v), rows, cols)
	}
	h := &HU{Rows: rows, Cols: cols, Pix: make([]int16, len(v))}
	for i, x := range v {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("imgx: non-finite HU value %v at pixel %d (row %d, col %d)", x, i, i/cols, i%cols)
		}
		h.Pix[i] = clampInt16(math.Round(x))
	}
	return h, nil
}

func clampInt16(x float64) int16 {
	if x < math.MinInt16 {
		return math.MinInt16
	}
	if x > math.MaxInt16 {
		return math.MaxInt16
	}
	return int16(x)
}

// EncodeInt16 returns the pixels as little-endian int16 bytes.
func (h *HU) EncodeInt16() []byte {
	b := make([]byte, 2*len(h.Pix))
	for i, v := range h.Pix {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(v))
	}
	return b
}

// DecodeHU decodes little-endian int16 bytes into a slice of rows×cols.
func DecodeHU(rows, cols int, b []byte) (*HU, error) {
	if err := CheckSize(rows, cols); err != nil {
		return nil, err
	}
	if len(b) != 2*rows*cols {
		return nil, fmt.Errorf("%w: %d bytes for %d×%d int16", ErrShape, len(b), rows, cols)
	}
	h := &HU{Rows: rows, Cols: cols, Pix: make([]int16, rows*cols)}
	for i := range h.Pix {
		h.Pix[i] = int16(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return h, nil
}

// Mask is a binary image; Pix holds 0 or 1.
type Mask struct {
	Rows, Cols int
	Pix        []uint8
}

// NewMask allocates an empty mask.
func NewMask(rows, cols int) *Mask {
	return &Mask{Rows: rows, Cols: cols, Pix: make([]uint8, rows*cols)}
}

// Count returns the number of set pixels.
func (m *Mask) Count() int {
	n := 0
	for _, v := range m.Pix {
		if v != 0 {
			n++
		}
	}
	return n
}

// PackBits encodes the mask as rows*cols bits, row-major, most significant
// bit first.
func (m *Mask) PackBits() []byte {
	b := make([]byte, (len(m.Pix)+7)/8)
	for i, v := range m.Pix {
		if v != 0 {
			b[i>>3] |= 0x80 >> (i & 7)
		}
	}
	return b
}

// UnpackMask decodes bits written by PackBits.
func UnpackMask(rows, cols int, b []byte) (*Mask, error) {
	if err := CheckSize(rows, cols); err != nil {
		return nil, err
	}
	if len(b) != (rows*cols+7)/8 {
		return nil, fmt.Errorf("%w: %d mask bytes for %d×%d", ErrShape, len(b), rows, cols)
	}
	m := NewMask(rows, cols)
	for i := range m.Pix {
		if b[i>>3]&(0x80>>(i&7)) != 0 {
			m.Pix[i] = 1
		}
	}
	return m, nil
}

// Float is a single-channel float32 map (model input or probability map).
type Float struct {
	Rows, Cols int
	Pix        []float32
}

// NewFloat allocates a zero map.
func NewFloat(rows, cols int) *Float {
	return &Float{Rows: rows, Cols: cols, Pix: make([]float32, rows*cols)}
}

// EncodeFloat32 returns little-endian float32 bytes of v.
func EncodeFloat32(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// DecodeFloat32 decodes n little-endian float32 values.
func DecodeFloat32(n int, b []byte) ([]float32, error) {
	if len(b) != 4*n {
		return nil, fmt.Errorf("%w: %d bytes for %d float32", ErrShape, len(b), n)
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v, nil
}
