//go:build !purego

package dicomio

import (
	"encoding/binary"
	"math"
)

// addSatS16SSE2 is in pixels_amd64.s.
//
//go:noescape
func addSatS16SSE2(dst []int16, src []byte, ic int16) (extreme bool)

// addSatS16 sets dst[i] to the little-endian int16 at raw[2i] plus ic,
// clamped to the int16 range: eight pixels per SSE2 saturating add, then
// the last few one by one. raw must hold 2*len(dst) bytes. It reports
// whether dst holds -32768 or 32767 (hasExtreme), found in the same pass.
func addSatS16(dst []int16, raw []byte, ic int16) (extreme bool) {
	raw = raw[:2*len(dst)]
	n := len(dst) &^ 7
	extreme = addSatS16SSE2(dst[:n], raw[:2*n], ic)
	for i := n; i < len(dst); i++ {
		v := int32(int16(binary.LittleEndian.Uint16(raw[2*i:]))) + int32(ic)
		dst[i] = int16(min(max(v, math.MinInt16), math.MaxInt16))
		extreme = extreme || dst[i] == math.MinInt16 || dst[i] == math.MaxInt16
	}
	return extreme
}

// maskAddSatS16SSE2 is in pixels_amd64.s.
//
//go:noescape
func maskAddSatS16SSE2(dst []int16, src []byte, mask uint16, ic int16) (extreme bool)

// maskAddSatS16 sets dst[i] to the little-endian word at raw[2i] masked
// to its low bits (unsigned samples of bits ≤ 15 bits at the bottom of the
// word) plus ic, clamped to the int16 range: eight pixels per SSE2 step,
// then the last few one by one. raw must hold 2*len(dst) bytes. It
// reports whether dst holds -32768 or 32767, as addSatS16 does.
func maskAddSatS16(dst []int16, raw []byte, bits int, ic int16) (extreme bool) {
	raw = raw[:2*len(dst)]
	mask := uint16(1)<<uint(bits) - 1
	n := len(dst) &^ 7
	extreme = maskAddSatS16SSE2(dst[:n], raw[:2*n], mask, ic)
	for i := n; i < len(dst); i++ {
		v := int32(binary.LittleEndian.Uint16(raw[2*i:])&mask) + int32(ic)
		dst[i] = int16(min(max(v, math.MinInt16), math.MaxInt16))
		extreme = extreme || dst[i] == math.MinInt16 || dst[i] == math.MaxInt16
	}
	return extreme
}
