package dicomio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/suyashkumar/dicom/pkg/tag"
)

// Encapsulated pixel data (PS3.5 A.4): Read decodes the lossless
// compressed transfer syntaxes common for CT (RLE Lossless and JPEG
// Lossless process 14) frame by frame into native little-endian samples,
// which then go through the same rescale as uncompressed files.

// Transfer syntax UIDs of the encapsulated syntaxes Read decodes.
const (
	// SyntaxRLELossless is RLE Lossless (PS3.5 Annex G).
	SyntaxRLELossless = "1.2.840.10008.1.2.5"
	// SyntaxJPEGLosslessSV1 is JPEG Lossless, Non-Hierarchical,
	// First-Order Prediction (process 14, selection value 1).
	SyntaxJPEGLosslessSV1 = "1.2.840.10008.1.2.4.70"
	// SyntaxJPEGLossless is JPEG Lossless, Non-Hierarchical (process 14),
	// any predictor.
	SyntaxJPEGLossless = "1.2.840.10008.1.2.4.57"
)

// MaxDecodedBytes bounds the decoded samples of one compressed file
// (rows × cols × frames × bytes per sample): 1 GiB holds 2048 frames of
// 512×512 at 16 bits.
const MaxDecodedBytes = 1 << 30

// ErrCorruptPixels reports compressed pixel data that cannot be decoded:
// a bad RLE header or segment, a malformed JPEG stream, fragments that do
// not match the basic offset table or the number of frames.
var ErrCorruptPixels = errors.New("dicomio: corrupt compressed pixel data")

// CodecError is the error of a frame decoder. Err is ErrCorruptPixels
// for damaged data, or ErrPixelFormat for valid data in a form Read does
// not handle (a JPEG process other than lossless, several components, a
// precision above BitsAllocated).
type CodecError struct {
	// Codec is "rle", "jpeg-lossless" or "encapsulation".
	Codec string
	// Offset is the byte offset in the frame (or, for "encapsulation", in
	// the pixel data value) where the problem was found, or -1.
	Offset int
	Msg    string
	Err    error
}

func (e *CodecError) Error() string {
	if e.Offset >= 0 {
		return fmt.Sprintf("dicomio: %s: at byte %d: %s", e.Codec, e.Offset, e.Msg)
	}
	return fmt.Sprintf("dicomio: %s: %s", e.Codec, e.Msg)
}

// Unwrap returns ErrCorruptPixels or ErrPixelFormat.
func (e *CodecError) Unwrap() error { return e.Err }

func codecErr(codec string, off int, sentinel error, format string, args ...any) *CodecError {
	return &CodecError{Codec: codec, Offset: off, Msg: fmt.Sprintf(format, args...), Err: sentinel}
}

// codec decodes one compressed frame into dst: rows×cols samples of
// len(dst)/(rows×cols) bytes each, little endian.
type codec func(dst, src []byte, rows, cols int) error

// encapsulatedSyntaxes maps the encapsulated transfer syntaxes Read
// decodes to their frame decoder. Their datasets are explicit VR little
// endian.
var encapsulatedSyntaxes = map[string]codec{
	SyntaxRLELossless: func(dst, src []byte, rows, cols int) error {
		return decodeRLE(dst, src, rows, cols, 1, len(dst)/(rows*cols))
	},
	SyntaxJPEGLosslessSV1: func(dst, src []byte, rows, cols int) error {
		return decodeJPEGLossless(dst, src, rows, cols, len(dst)/(rows*cols))
	},
	SyntaxJPEGLossless: func(dst, src []byte, rows, cols int) error {
		return decodeJPEGLossless(dst, src, rows, cols, len(dst)/(rows*cols))
	},
}

// fragment is one item of an encapsulated value.
type fragment struct {
	off  int // offset of the item tag, from the first item after the offset table
	data []byte
}

// encapsulatedValue reads the items of an encapsulated pixel data value
// starting at b[start] (the basic offset table item) up to the sequence
// delimitation item, checking every length against len(b). It returns
// the offset table's bytes and the fragments.
func encapsulatedValue(b []byte, start int) (bot []byte, frags []fragment, err error) {
	pos := start
	first := -1
	for n := 0; ; n++ {
		if n > maxElements {
			return nil, nil, codecErr("encapsulation", pos-start, ErrTooLarge, "more than %d fragments", maxElements)
		}
		if len(b)-pos < 8 {
			return nil, nil, codecErr("encapsulation", pos-start, ErrTruncated, "item header needs 8 bytes, %d left", len(b)-pos)
		}
		t := tag.Tag{Group: binary.LittleEndian.Uint16(b[pos:]), Element: binary.LittleEndian.Uint16(b[pos+2:])}
		vl := binary.LittleEndian.Uint32(b[pos+4:])
		if t == tag.SequenceDelimitationItem && n > 0 {
			return bot, frags, nil
		}
		if t != tag.Item || vl == tag.VLUndefinedLength {
			return nil, nil, codecErr("encapsulation", pos-start, ErrCorruptPixels, "found %v (length %#x) where an item was expected", t, vl)
		}
		if int64(vl) > int64(len(b)-pos-8) {
			return nil, nil, codecErr("encapsulation", pos-start, ErrTruncated, "item of %d bytes runs past the end of the file", vl)
		}
		data := b[pos+8 : pos+8+int(vl)]
		if n == 0 {
			bot = data
			first = pos + 8 + int(vl)
		} else {
			frags = append(frags, fragment{off: pos - first, data: data})
		}
		pos += 8 + int(vl)
	}
}

// splitFrames groups fragments into nframes compressed frames: one
// fragment per frame when there are as many; else by the basic offset
// table when it is not empty; else all fragments for a single frame, or
// (JPEG) a new frame at each fragment that starts with an SOI marker.
func splitFrames(bot []byte, frags []fragment, nframes int, jpeg bool) ([][]byte, error) {
	fail := func(format string, args ...any) error {
		return codecErr("encapsulation", -1, ErrCorruptPixels, format, args...)
	}
	if len(frags) == 0 {
		return nil, fail("no fragments")
	}
	if len(frags) < nframes {
		return nil, fail("%d fragments for %d frames", len(frags), nframes)
	}
	var groups [][]fragment
	switch {
	case len(frags) == nframes:
		// One fragment per frame, whatever the offset table says (some
		// writers get it wrong; with as many fragments as frames, there
		// is no other valid grouping).
		for i := range frags {
			groups = append(groups, frags[i:i+1])
		}
	case len(bot) > 0:
		if len(bot)%4 != 0 {
			return nil, fail("basic offset table has %d bytes, not a multiple of 4", len(bot))
		}
		if len(bot)/4 != nframes {
			return nil, fail("basic offset table has %d entries for %d frames", len(bot)/4, nframes)
		}
		offs := make([]uint32, nframes)
		for i := range offs {
			offs[i] = binary.LittleEndian.Uint32(bot[4*i:])
			if (i == 0 && offs[i] != 0) || (i > 0 && offs[i] <= offs[i-1]) {
				return nil, fail("basic offset table entry %d is %d: entries must start at 0 and increase", i, offs[i])
			}
		}
		j := 0
		for i := range nframes {
			if j == len(frags) || uint32(frags[j].off) != offs[i] {
				return nil, fail("basic offset table entry %d (%d) is not the start of a fragment", i, offs[i])
			}
			k := j + 1
			for k < len(frags) && (i == nframes-1 || uint32(frags[k].off) < offs[i+1]) {
				k++
			}
			groups = append(groups, frags[j:k])
			j = k
		}
	case nframes == 1:
		groups = [][]fragment{frags}
	case jpeg:
		for i, f := range frags {
			if i == 0 || (len(f.data) >= 2 && f.data[0] == 0xFF && f.data[1] == 0xD8) {
				groups = append(groups, nil)
			}
			groups[len(groups)-1] = append(groups[len(groups)-1], f)
		}
		if len(groups) != nframes {
			return nil, fail("%d fragments hold %d JPEG images (SOI markers) for %d frames and there is no offset table",
				len(frags), len(groups), nframes)
		}
	default:
		return nil, fail("%d fragments for %d frames and no offset table", len(frags), nframes)
	}
	out := make([][]byte, len(groups))
	for i, g := range groups {
		if len(g) == 1 {
			out[i] = g[0].data
			continue
		}
		n := 0
		for _, f := range g {
			n += len(f.data)
		}
		buf := make([]byte, 0, n)
		for _, f := range g {
			buf = append(buf, f.data...)
		}
		out[i] = buf
	}
	return out, nil
}

// encapsulatedFrames returns the decoder of frames of a file in the
// encapsulated syntax ts whose top-level pixel data value starts at
// b[start]. frame(i, dst) decodes frame i into dst, which must hold
// rows×cols×bytesPerSample bytes.
func encapsulatedFrames(b []byte, start int, ts string, pf pixelFormat) (func(i int, dst []byte) error, error) {
	dec := encapsulatedSyntaxes[ts]
	if dec == nil {
		return nil, formatErr("", ErrCompressed, "transfer syntax %s (%s) is not supported", ts, SyntaxName(ts))
	}
	if start < 0 {
		return nil, formatErr("", ErrPixelFormat, "pixel data is not encapsulated in the compressed transfer syntax %s (%s)", ts, SyntaxName(ts))
	}
	if total := int64(pf.rows) * int64(pf.cols) * int64(pf.frames) * int64(pf.bitsAllocated/8); total > MaxDecodedBytes {
		return nil, formatErr("", ErrTooLarge, "%d frame(s) of %d×%d at %d bits decode to %d bytes, over the %d-byte limit",
			pf.frames, pf.rows, pf.cols, pf.bitsAllocated, total, MaxDecodedBytes)
	}
	bot, frags, err := encapsulatedValue(b, start)
	if err != nil {
		return nil, &FormatError{Offset: int64(start), Msg: "reading encapsulated pixel data: " + err.Error(), Err: err}
	}
	frames, err := splitFrames(bot, frags, pf.frames, ts != SyntaxRLELossless)
	if err != nil {
		return nil, &FormatError{Offset: int64(start), Msg: "splitting encapsulated pixel data into frames: " + err.Error(), Err: err}
	}
	// Each frame must be long enough for its decoded size before the
	// caller allocates the output.
	for i, f := range frames {
		var err error
		if ts == SyntaxRLELossless {
			err = rleCheckSize(f, pf.rows*pf.cols, pf.bitsAllocated/8)
		} else {
			err = jpegCheckSize(f, pf.rows*pf.cols)
		}
		if err != nil {
			return nil, &FormatError{Offset: -1, Msg: fmt.Sprintf("frame %d (%s): %v", i+1, SyntaxName(ts), err), Err: err}
		}
	}
	return func(i int, dst []byte) error {
		if err := dec(dst, frames[i], pf.rows, pf.cols); err != nil {
			return &FormatError{Offset: -1, Msg: fmt.Sprintf("decoding frame %d (%s): %v", i+1, SyntaxName(ts), err), Err: err}
		}
		return nil
	}, nil
}
