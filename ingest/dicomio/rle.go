package dicomio

import (
	"encoding/binary"
	"strconv"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// RLE Lossless (PS3.5 Annex G). A frame starts with a 64-byte header of
// sixteen little-endian uint32: the number of segments (1 to 15), then
// the offset of each segment from the start of the frame (the first is
// 64). There is one segment per byte of each sample: for sample 1 its most
// significant byte first, then sample 2 and so on. Each segment decodes
// to rows×cols bytes with a PackBits scheme: a header byte n of 0..127
// copies the next n+1 bytes, -127..-1 repeats the next byte 1-n times,
// -128 does nothing.

const rleHeaderBytes = 64

// DecodeRLE decodes one RLE Lossless frame of rows×cols pixels, each of
// samples samples of bitsAllocated bits (8, 16 or 32). It returns the
// samples little endian and pixel-interleaved (planar configuration 0),
// rows×cols×samples×bitsAllocated/8 bytes. Errors are *CodecError.
func DecodeRLE(src []byte, rows, cols, samples, bitsAllocated int) ([]byte, error) {
	if err := imgx.CheckSize(rows, cols); err != nil {
		return nil, codecErr("rle", -1, ErrTooLarge, "%v", err)
	}
	if samples < 1 || samples > 3 {
		return nil, codecErr("rle", -1, ErrPixelFormat, "%d samples per pixel", samples)
	}
	if bitsAllocated != 8 && bitsAllocated != 16 && bitsAllocated != 32 {
		return nil, codecErr("rle", -1, ErrPixelFormat, "BitsAllocated %d", bitsAllocated)
	}
	bps := bitsAllocated / 8
	if err := rleCheckSize(src, rows*cols, samples*bps); err != nil {
		return nil, err
	}
	dst := make([]byte, rows*cols*samples*bps)
	return dst, decodeRLE(dst, src, rows, cols, samples, bps)
}

// rleCheckSize refuses a frame too short to hold segments segments of
// n bytes each (a run header and byte encode at most 128 bytes), so that
// a small frame cannot make the caller allocate a large output.
func rleCheckSize(src []byte, n, segments int) error {
	if min := rleHeaderBytes + segments*2*((n+127)/128); len(src) < min {
		return codecErr("rle", -1, ErrCorruptPixels, "frame of %d bytes cannot hold %d segments of %d bytes (at least %d bytes)",
			len(src), segments, n, min)
	}
	return nil
}

// decodeRLE decodes src into dst, rows×cols pixels of samples×bps bytes
// each, little endian.
func decodeRLE(dst, src []byte, rows, cols, samples, bps int) error {
	n := rows * cols
	nseg := samples * bps
	if len(dst) != n*nseg {
		return codecErr("rle", -1, ErrPixelFormat, "output of %d bytes for %d×%d pixels of %d bytes", len(dst), rows, cols, nseg)
	}
	if len(src) < rleHeaderBytes {
		return codecErr("rle", 0, ErrCorruptPixels, "frame of %d bytes is shorter than the %d-byte header", len(src), rleHeaderBytes)
	}
	if got := binary.LittleEndian.Uint32(src); got != uint32(nseg) {
		return codecErr("rle", 0, ErrCorruptPixels, "header declares %d segments, want %d for %d sample(s) of %d bits",
			got, nseg, samples, 8*bps)
	}
	if err := rleCheckSize(src, n, nseg); err != nil {
		return err
	}
	var offs [16]int
	for i := range nseg {
		o := binary.LittleEndian.Uint32(src[4+4*i:])
		switch {
		case i == 0 && o != rleHeaderBytes:
			return codecErr("rle", 4, ErrCorruptPixels, "first segment at %d, not %d", o, rleHeaderBytes)
		case int64(o) > int64(len(src)):
			return codecErr("rle", 4+4*i, ErrCorruptPixels, "segment %d at %d is past the %d-byte frame", i+1, o, len(src))
		case i > 0 && int(o) <= offs[i-1]:
			return codecErr("rle", 4+4*i, ErrCorruptPixels, "segment %d at %d does not follow segment %d at %d", i+1, o, i, offs[i-1])
		}
		offs[i] = int(o)
	}
	offs[nseg] = len(src)
	for s := range nseg {
		// Segment s holds byte s%bps (most significant first) of sample
		// s/bps; dst is little endian and pixel-interleaved.
		start := (s/bps)*bps + (bps - 1 - s%bps)
		if err := unpackBits(dst[start:], nseg, src[offs[s]:offs[s+1]], n); err != nil {
			err.Offset += offs[s]
			err.Msg = "segment " + strconv.Itoa(s+1) + ": " + err.Msg
			return err
		}
	}
	return nil
}

// unpackBits decodes one segment of n bytes into dst[0], dst[stride],
// dst[2*stride]... Bytes after the n-th (segment padding) are ignored.
func unpackBits(dst []byte, stride int, seg []byte, n int) *CodecError {
	i, o := 0, 0
	for o < n {
		if i >= len(seg) {
			return codecErr("rle", i, ErrCorruptPixels, "segment ends after %d of %d bytes", o, n)
		}
		h := int8(seg[i])
		i++
		switch {
		case h >= 0:
			k := int(h) + 1
			if i+k > len(seg) {
				return codecErr("rle", i-1, ErrCorruptPixels, "literal run of %d bytes past the end of the segment", k)
			}
			if k > n-o {
				k = n - o
			}
			if stride == 1 {
				copy(dst[o:o+k], seg[i:i+k])
			} else {
				d := o * stride
				for _, c := range seg[i : i+k] {
					dst[d] = c
					d += stride
				}
			}
			i += k
			o += k
		case h != -128:
			k := 1 - int(h)
			if i >= len(seg) {
				return codecErr("rle", i-1, ErrCorruptPixels, "replicate run without its byte")
			}
			c := seg[i]
			i++
			if k > n-o {
				k = n - o
			}
			if stride == 1 {
				run := dst[o : o+k]
				for j := range run {
					run[j] = c
				}
			} else {
				for d, end := o*stride, (o+k)*stride; d < end; d += stride {
					dst[d] = c
				}
			}
			o += k
		}
	}
	return nil
}
