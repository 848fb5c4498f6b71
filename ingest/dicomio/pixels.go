package dicomio

import (
	"encoding/binary"
	"math"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// decodeFrame converts one frame of stored values to HU, written into
// dst (rows×cols pixels), which it returns as the HU's Pix. The stored
// value is the BitsStored bits ending at HighBit, sign-extended when
// PixelRepresentation is 1; HU = stored×slope + intercept, rounded and
// clamped to int16. Every loop below writes every pixel of dst, so dst
// may hold anything beforehand (a Decoder's plane, reused).
//
// The common CT layouts (16-bit little-endian samples, slope 1, integer
// intercept) take integer loops with no per-pixel branch; 16 signed bits
// stored, the usual case, is a saturating add of the intercept, eight
// pixels per SSE2 instruction on amd64 (pixels_amd64.s), four per 64-bit
// word elsewhere; unsigned samples of up to 15 bits at the bottom of the
// word (12 bits stored at high bit 11) are masked first, then added the
// same way. Every other layout takes decodeGeneric, the plain
// per-pixel definition.
//
// extreme is false when the frame surely holds no -32768 or 32767 (the
// values clamping leaves): the saturating adds find it in the same pass;
// the other loops say true, and the caller checks with hasExtreme.
func decodeFrame(dst []int16, raw []byte, pf pixelFormat, slope, intercept float64) (hu *imgx.HU, extreme bool) {
	hu = &imgx.HU{Rows: pf.rows, Cols: pf.cols, Pix: dst[:pf.rows*pf.cols]}
	integral := slope == 1 && intercept == math.Trunc(intercept) && math.Abs(intercept) < 1<<20
	if !integral || pf.bitsAllocated != 16 || pf.bo != binary.LittleEndian {
		decodeGeneric(hu.Pix, raw, pf, slope, intercept)
		return hu, true
	}
	ic := int32(intercept)
	if pf.signed && pf.bitsStored == 16 && ic >= math.MinInt16 && ic <= math.MaxInt16 {
		return hu, addSatS16(hu.Pix, raw, int16(ic))
	}
	if !pf.signed && pf.bitsStored <= 15 && pf.highBit == pf.bitsStored-1 && ic >= math.MinInt16 && ic <= math.MaxInt16 {
		// unsigned 12-bit (or up to 15-bit) samples at the bottom of the
		// word, the other usual CT layout: masked, then the same
		// saturating add
		return hu, maskAddSatS16(hu.Pix, raw, pf.bitsStored, int16(ic))
	}
	decodeLE16(hu.Pix, raw, pf.highBit, pf.bitsStored, pf.signed, ic)
	return hu, true
}

// decodeLE16 decodes 16-bit little-endian samples with slope 1 and the
// integer intercept ic. The stored value is the bits bits ending at
// highBit: shifting them to the top of a 32-bit word and back down (an
// arithmetic shift when signed) masks and sign-extends without a branch.
// It reads four samples per 64-bit load.
func decodeLE16(dst []int16, raw []byte, highBit, bits int, signed bool, ic int32) {
	raw = raw[:2*len(dst)]
	lsh, rsh := uint(31-highBit), uint(32-bits)
	if signed {
		for len(raw) >= 8 && len(dst) >= 4 {
			x := binary.LittleEndian.Uint64(raw)
			dst[0] = signedHU(uint32(x), lsh, rsh, ic)
			dst[1] = signedHU(uint32(x>>16), lsh, rsh, ic)
			dst[2] = signedHU(uint32(x>>32), lsh, rsh, ic)
			dst[3] = signedHU(uint32(x>>48), lsh, rsh, ic)
			raw, dst = raw[8:], dst[4:]
		}
		for i := range dst {
			dst[i] = signedHU(uint32(binary.LittleEndian.Uint16(raw[2*i:])), lsh, rsh, ic)
		}
		return
	}
	for len(raw) >= 8 && len(dst) >= 4 {
		x := binary.LittleEndian.Uint64(raw)
		dst[0] = unsignedHU(uint32(x), lsh, rsh, ic)
		dst[1] = unsignedHU(uint32(x>>16), lsh, rsh, ic)
		dst[2] = unsignedHU(uint32(x>>32), lsh, rsh, ic)
		dst[3] = unsignedHU(uint32(x>>48), lsh, rsh, ic)
		raw, dst = raw[8:], dst[4:]
	}
	for i := range dst {
		dst[i] = unsignedHU(uint32(binary.LittleEndian.Uint16(raw[2*i:])), lsh, rsh, ic)
	}
}

// signedHU is the HU of the 16-bit word in the low half of w (higher
// bits are shifted out), stored signed.
func signedHU(w uint32, lsh, rsh uint, ic int32) int16 {
	v := int32(w<<lsh)>>rsh + ic
	return int16(min(max(v, math.MinInt16), math.MaxInt16))
}

// unsignedHU is signedHU for unsigned stored values.
func unsignedHU(w uint32, lsh, rsh uint, ic int32) int16 {
	v := int32(w<<lsh>>rsh) + ic
	return int16(min(max(v, math.MinInt16), math.MaxInt16))
}

// Lane masks of four 16-bit lanes in a uint64.
const (
	lanesLow15 = 0x7fff_7fff_7fff_7fff
	lanesSign  = 0x8000_8000_8000_8000
	lanesOne   = 0x0001_0001_0001_0001
)

// addS16 sets dst[i] to the little-endian int16 at raw[2i] plus ic,
// wrapping, four pixels per 64-bit word (SWAR). It reports whether any
// sum left the int16 range, in which case dst holds wrapped values and
// the caller must decode again with clamping.
func addS16(dst []int16, raw []byte, ic int16) (overflow bool) {
	raw = raw[:2*len(dst)]
	y := uint64(uint16(ic)) * lanesOne
	yl := y & lanesLow15
	var ov uint64
	// Two words (eight pixels) a step; the loop condition lets the
	// compiler drop every bounds check.
	for len(raw) >= 16 && len(dst) >= 8 {
		x0 := binary.LittleEndian.Uint64(raw)
		x1 := binary.LittleEndian.Uint64(raw[8:])
		// Add the low 15 bits of each lane (no carry leaves a lane), then
		// put the lanes' sign bits back in by xor.
		s0 := ((x0 & lanesLow15) + yl) ^ ((x0 ^ y) & lanesSign)
		s1 := ((x1 & lanesLow15) + yl) ^ ((x1 ^ y) & lanesSign)
		// A lane overflowed when its addends have the same sign and the
		// sum another.
		ov |= ^(x0^y)&(x0^s0) | ^(x1^y)&(x1^s1)
		dst[0] = int16(s0)
		dst[1] = int16(s0 >> 16)
		dst[2] = int16(s0 >> 32)
		dst[3] = int16(s0 >> 48)
		dst[4] = int16(s1)
		dst[5] = int16(s1 >> 16)
		dst[6] = int16(s1 >> 32)
		dst[7] = int16(s1 >> 48)
		raw, dst = raw[16:], dst[8:]
	}
	for i := range dst {
		v := int32(int16(binary.LittleEndian.Uint16(raw[2*i:]))) + int32(ic)
		if v < math.MinInt16 || v > math.MaxInt16 {
			return true
		}
		dst[i] = int16(v)
	}
	return ov&lanesSign != 0
}

// decodeGeneric is decodeFrame for any layout, one pixel at a time.
// sampler reads stored pixel values: Bits Stored at High Bit of 8- or
// 16-bit cells, sign-extended when Pixel Representation is signed.
type sampler struct {
	pf          pixelFormat
	shift       uint
	mask, sign  uint32
	sixteenBits bool
}

func newSampler(pf pixelFormat) sampler {
	return sampler{pf: pf, shift: uint(pf.highBit + 1 - pf.bitsStored), mask: uint32(1)<<uint(pf.bitsStored) - 1,
		sign: uint32(1) << uint(pf.bitsStored-1), sixteenBits: pf.bitsAllocated == 16}
}

// at returns the i-th stored value of raw.
func (s sampler) at(raw []byte, i int) int32 {
	var u uint32
	if s.sixteenBits {
		u = uint32(s.pf.bo.Uint16(raw[2*i:]))
	} else {
		u = uint32(raw[i])
	}
	u = (u >> s.shift) & s.mask
	v := int32(u)
	if s.pf.signed && u&s.sign != 0 {
		v -= int32(s.mask) + 1
	}
	return v
}

func decodeGeneric(dst []int16, raw []byte, pf pixelFormat, slope, intercept float64) {
	smp := newSampler(pf)
	integral := slope == 1 && intercept == math.Trunc(intercept) && math.Abs(intercept) < 1<<20
	ic := int32(intercept)
	for i := range dst {
		v := smp.at(raw, i)
		var h float64
		if integral {
			h = float64(v + ic)
		} else {
			h = math.Round(float64(v)*slope + intercept)
		}
		switch {
		case h < math.MinInt16:
			h = math.MinInt16
		case h > math.MaxInt16:
			h = math.MaxInt16
		}
		dst[i] = int16(h)
	}
}
