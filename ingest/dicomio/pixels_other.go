//go:build !amd64 || purego

package dicomio

// addSatS16 sets dst[i] to the little-endian int16 at raw[2i] plus ic,
// clamped to the int16 range: four lanes per 64-bit word (addS16), and
// again with clamping in the rare frame where a sum left the range. raw
// must hold 2*len(dst) bytes. It reports whether dst holds -32768 or
// 32767 (hasExtreme, a second pass here).
func addSatS16(dst []int16, raw []byte, ic int16) (extreme bool) {
	if addS16(dst, raw, ic) {
		decodeLE16(dst, raw, 15, 16, true, int32(ic))
	}
	return hasExtreme(dst)
}

// maskAddSatS16 sets dst[i] to the little-endian word at raw[2i] masked
// to its low bits (unsigned samples of bits ≤ 15 bits at the bottom of the
// word) plus ic, clamped to the int16 range (decodeLE16's loop). It
// reports whether dst holds -32768 or 32767.
func maskAddSatS16(dst []int16, raw []byte, bits int, ic int16) (extreme bool) {
	decodeLE16(dst, raw, bits-1, bits, false, int32(ic))
	return hasExtreme(dst)
}
