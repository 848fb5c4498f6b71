package dicomio

import (
	"encoding/binary"
	"fmt"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// JPEG lossless (ITU T.81 Annex H, process 14: Huffman coding,
// non-hierarchical), one component of 2 to 16 bits. Each sample is
// predicted from its left (Ra), upper (Rb) and upper-left (Rc) neighbours
// by the selection value of the scan (1: Ra, 2: Rb, 3: Rc, 4: Ra+Rb-Rc,
// 5: Ra+((Rb-Rc)>>1), 6: Rb+((Ra-Rc)>>1), 7: (Ra+Rb)/2); the first line
// of the image and of each restart interval uses Ra, the first sample of
// each other line Rb, and the very first sample 2^(P-Pt-1). The
// Huffman-coded category SSSS (0 to 16) is followed by SSSS extra bits of
// the difference (none for 16, whose difference is 32768); samples are
// reconstructed modulo 2^16 and shifted left by the point transform Pt.

// lookBits is the code length decoded by one table lookup.
const lookBits = 9

// huffTable is a Huffman table of a DHT segment (T.81 Annex C).
type huffTable struct {
	// look maps the next lookBits bits to (length<<8 | symbol) for codes
	// of at most lookBits bits, else 0.
	look    [1 << lookBits]uint16
	maxcode [17]int32 // largest code of each length, -1 if none
	mincode [17]int32
	valptr  [17]int32 // index in vals of the first code of each length
	vals    [256]byte
}

func newHuffTable(counts []byte, vals []byte) (*huffTable, error) {
	t := &huffTable{}
	code, k := 0, 0
	for l := 1; l <= 16; l++ {
		n := int(counts[l-1])
		t.valptr[l], t.mincode[l], t.maxcode[l] = int32(k), int32(code), -1
		for range n {
			if code >= 1<<l {
				return nil, fmt.Errorf("too many codes of %d bits", l)
			}
			v := vals[k]
			if v > 16 {
				return nil, fmt.Errorf("difference category %d is over 16", v)
			}
			t.vals[k] = v
			if l <= lookBits {
				lo := code << (lookBits - l)
				for j := lo; j < lo+1<<(lookBits-l); j++ {
					t.look[j] = uint16(l)<<8 | uint16(v)
				}
			}
			code++
			k++
		}
		if n > 0 {
			t.maxcode[l] = int32(code - 1)
		}
		code <<= 1
	}
	return t, nil
}

// bitReader reads entropy-coded data: 0xFF 0x00 is a 0xFF byte, any
// other 0xFF pair is a marker, where reading stops (zero bits are supplied
// past it and counted in fake, so that a read past the data is detected).
type bitReader struct {
	src    []byte
	pos    int
	acc    uint64 // the next n bits, most significant first
	n      int
	fake   int // zero bits at the end of acc that are not in the data
	marker bool
	bad    bool // a code not in the table was read
}

func (br *bitReader) fill() {
	// Fast path: the next eight bytes hold no 0xFF (no stuffing, no
	// marker); take as many whole bytes as acc has room for.
	if !br.marker && br.pos+8 <= len(br.src) {
		w := binary.BigEndian.Uint64(br.src[br.pos:])
		if x := ^w; (x-0x0101010101010101)&^x&0x8080808080808080 == 0 {
			k := (64 - br.n) / 8
			w &^= 1<<uint(64-8*k) - 1
			br.acc |= w >> uint(br.n)
			br.pos += k
			br.n += 8 * k
			return
		}
	}
	for br.n <= 56 {
		var b byte
		switch {
		case br.marker || br.pos >= len(br.src):
			br.fake += 8
		case br.src[br.pos] != 0xFF:
			b = br.src[br.pos]
			br.pos++
		case br.pos+1 < len(br.src) && br.src[br.pos+1] == 0:
			b = 0xFF
			br.pos += 2
		default:
			br.marker = true
			br.fake += 8
		}
		br.acc |= uint64(b) << uint(56-br.n)
		br.n += 8
	}
}

// slow decodes a code longer than lookBits (T.81 F.16).
func (br *bitReader) slow(t *huffTable) uint {
	for l := lookBits + 1; l <= 16; l++ {
		c := int32(br.acc >> (64 - l))
		if c <= t.maxcode[l] {
			br.acc <<= uint(l)
			br.n -= l
			return uint(t.vals[t.valptr[l]+c-t.mincode[l]])
		}
	}
	br.bad = true
	return 0
}

// row decodes one line into cur, predicting from cur and prev (the line
// above) with selection value pred; first marks the first line of the
// scan or of a restart interval. The bit reader state is kept in locals
// and the Huffman decoding is written out here: this is the hot loop.
func (br *bitReader) row(t *huffTable, cur, prev []int32, pred int, first bool, initial int32) {
	acc, n := br.acc, br.n
	if first {
		pred = 1
	}
	for x := range cur {
		if n < 32 {
			br.acc, br.n = acc, n
			br.fill()
			acc, n = br.acc, br.n
		}
		var s uint
		if e := t.look[acc>>(64-lookBits)]; e != 0 {
			l := uint(e >> 8)
			s = uint(e & 0xff)
			acc <<= l
			n -= int(l)
		} else {
			br.acc, br.n = acc, n
			s = br.slow(t)
			acc, n = br.acc, br.n
		}
		var d int32
		switch s {
		case 0:
		case 16:
			d = 32768
		default:
			d = int32(acc >> (64 - s))
			acc <<= s
			n -= int(s)
			if d < 1<<(s-1) {
				d -= 1<<s - 1
			}
		}
		var px int32
		switch {
		case x == 0 && first:
			px = initial
		case x == 0:
			px = prev[0]
		default:
			switch pred {
			case 1:
				px = cur[x-1]
			case 2:
				px = prev[x]
			case 3:
				px = prev[x-1]
			case 4:
				px = cur[x-1] + prev[x] - prev[x-1]
			case 5:
				px = cur[x-1] + (prev[x]-prev[x-1])>>1
			case 6:
				px = prev[x] + (cur[x-1]-prev[x-1])>>1
			default:
				px = (cur[x-1] + prev[x]) >> 1
			}
		}
		cur[x] = (px + d) & 0xFFFF
	}
	br.acc, br.n = acc, n
}

// DecodeJPEGLossless decodes one JPEG lossless image (ITU T.81 process
// 14: SOF3, Huffman coding, predictors 1 to 7, point transform, restart
// intervals) of one component of rows×cols samples into bitsAllocated (8
// or 16) bit little-endian samples. The precision must not exceed
// bitsAllocated. Errors are *CodecError.
func DecodeJPEGLossless(src []byte, rows, cols, bitsAllocated int) ([]byte, error) {
	if err := imgx.CheckSize(rows, cols); err != nil {
		return nil, codecErr("jpeg-lossless", -1, ErrTooLarge, "%v", err)
	}
	if bitsAllocated != 8 && bitsAllocated != 16 {
		return nil, codecErr("jpeg-lossless", -1, ErrPixelFormat, "BitsAllocated %d", bitsAllocated)
	}
	if err := jpegCheckSize(src, rows*cols); err != nil {
		return nil, err
	}
	dst := make([]byte, rows*cols*bitsAllocated/8)
	return dst, decodeJPEGLossless(dst, src, rows, cols, bitsAllocated/8)
}

// jpegCheckSize refuses data too short for n samples (each takes at least
// one bit), so that a small frame cannot make the caller allocate a large
// output.
func jpegCheckSize(src []byte, n int) error {
	if len(src) < n/8 {
		return codecErr("jpeg-lossless", -1, ErrCorruptPixels, "%d bytes cannot hold %d samples (at least %d bytes)", len(src), n, n/8)
	}
	return nil
}

type jpegDecoder struct {
	src             []byte
	dst             []byte
	rows, cols, bps int
	precision       int
	component       byte
	sof             bool
	restart         int
	tables          [4]*huffTable
}

var sofNames = map[byte]string{
	0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive", 0xC5: "differential sequential",
	0xC6: "differential progressive", 0xC7: "differential lossless", 0xC9: "extended sequential, arithmetic",
	0xCA: "progressive, arithmetic", 0xCB: "lossless, arithmetic", 0xCD: "differential sequential, arithmetic",
	0xCE: "differential progressive, arithmetic", 0xCF: "differential lossless, arithmetic",
	0xDE: "hierarchical (DHP)", 0xDF: "hierarchical (EXP)", 0xCC: "arithmetic (DAC)",
}

func decodeJPEGLossless(dst, src []byte, rows, cols, bps int) error {
	if len(dst) != rows*cols*bps || (bps != 1 && bps != 2) {
		return codecErr("jpeg-lossless", -1, ErrPixelFormat, "output of %d bytes for %d×%d samples of %d bytes", len(dst), rows, cols, bps)
	}
	if err := jpegCheckSize(src, rows*cols); err != nil {
		return err
	}
	d := &jpegDecoder{src: src, dst: dst, rows: rows, cols: cols, bps: bps}
	return d.decode()
}

func (d *jpegDecoder) fail(off int, format string, args ...any) error {
	return codecErr("jpeg-lossless", off, ErrCorruptPixels, format, args...)
}

func (d *jpegDecoder) decode() error {
	src := d.src
	if len(src) < 2 || src[0] != 0xFF || src[1] != 0xD8 {
		return d.fail(0, "no SOI marker")
	}
	pos := 2
	scanned := false
	for {
		if pos >= len(src) {
			if scanned {
				return nil // a missing EOI is tolerated after a complete scan
			}
			return d.fail(pos, "data ends before the scan")
		}
		if src[pos] != 0xFF {
			return d.fail(pos, "byte %#02x where a marker was expected", src[pos])
		}
		for pos < len(src) && src[pos] == 0xFF {
			pos++
		}
		if pos >= len(src) {
			return d.fail(pos, "data ends inside a marker")
		}
		m := src[pos]
		at := pos - 1
		pos++
		switch {
		case m == 0xD9:
			if !scanned {
				return d.fail(at, "EOI before any scan")
			}
			return nil
		case m == 0xD8 || m == 0x01 || m == 0x00 || (m >= 0xD0 && m <= 0xD7):
			return d.fail(at, "unexpected marker FF%02X", m)
		}
		if len(src)-pos < 2 {
			return d.fail(pos, "marker FF%02X without its length", m)
		}
		l := int(binary.BigEndian.Uint16(src[pos:]))
		if l < 2 || l > len(src)-pos {
			return d.fail(pos, "marker FF%02X segment of %d bytes with %d left", m, l, len(src)-pos)
		}
		seg := src[pos+2 : pos+l]
		pos += l
		var err error
		switch m {
		case 0xC3:
			err = d.frameHeader(at, seg)
		case 0xC4:
			err = d.huffmanTables(at, seg)
		case 0xDD:
			if len(seg) != 2 {
				return d.fail(at, "DRI segment of %d bytes", len(seg))
			}
			d.restart = int(binary.BigEndian.Uint16(seg))
		case 0xDA:
			if scanned {
				return d.fail(at, "a second scan (only one component is supported)")
			}
			scanned = true
			pos, err = d.scan(at, seg, pos)
		default:
			if name, ok := sofNames[m]; ok {
				return codecErr("jpeg-lossless", at, ErrPixelFormat, "JPEG process %s (marker FF%02X) is not lossless process 14", name, m)
			}
			// APPn, COM, DQT, DNL and others carry nothing needed here.
		}
		if err != nil {
			return err
		}
	}
}

func (d *jpegDecoder) frameHeader(at int, seg []byte) error {
	if d.sof {
		return d.fail(at, "a second SOF marker")
	}
	if len(seg) < 6 || len(seg) != 6+3*int(seg[5]) {
		return d.fail(at, "SOF3 segment of %d bytes", len(seg))
	}
	d.sof = true
	d.precision = int(seg[0])
	y, x, nf := int(binary.BigEndian.Uint16(seg[1:])), int(binary.BigEndian.Uint16(seg[3:])), int(seg[5])
	switch {
	case nf != 1:
		return codecErr("jpeg-lossless", at, ErrPixelFormat, "%d components; only one is supported", nf)
	case d.precision < 2 || d.precision > 16:
		return d.fail(at, "precision %d is outside 2..16", d.precision)
	case d.precision > 8*d.bps:
		return codecErr("jpeg-lossless", at, ErrPixelFormat, "precision %d over BitsAllocated %d", d.precision, 8*d.bps)
	case y != d.rows || x != d.cols:
		return d.fail(at, "image is %d×%d but the DICOM header says %d×%d", y, x, d.rows, d.cols)
	}
	d.component = seg[6]
	return nil
}

func (d *jpegDecoder) huffmanTables(at int, seg []byte) error {
	for len(seg) > 0 {
		if len(seg) < 17 {
			return d.fail(at, "DHT segment too short")
		}
		class, id := seg[0]>>4, seg[0]&15
		if class > 1 || id > 3 {
			return d.fail(at, "DHT table class %d id %d", class, id)
		}
		n := 0
		for _, c := range seg[1:17] {
			n += int(c)
		}
		if n > 256 || len(seg) < 17+n {
			return d.fail(at, "DHT table of %d codes with %d bytes", n, len(seg)-17)
		}
		t, err := newHuffTable(seg[1:17], seg[17:17+n])
		if err != nil {
			return d.fail(at, "DHT table %d: %v", id, err)
		}
		if class == 0 { // lossless scans use the DC-class tables
			d.tables[id] = t
		}
		seg = seg[17+n:]
	}
	return nil
}

// scan reads the SOS header seg and decodes the entropy-coded data from
// src[pos]; it returns the offset of the marker that follows.
func (d *jpegDecoder) scan(at int, seg []byte, pos int) (int, error) {
	if !d.sof {
		return 0, d.fail(at, "SOS before SOF3")
	}
	if len(seg) < 1 || seg[0] != 1 {
		return 0, d.fail(at, "SOS segment of %d bytes is not for one component", len(seg))
	}
	if len(seg) != 6 {
		return 0, d.fail(at, "SOS segment of %d bytes for one component, want 6", len(seg))
	}
	if seg[1] != d.component {
		return 0, d.fail(at, "scan of component %d, frame has component %d", seg[1], d.component)
	}
	t := d.tables[seg[2]>>4&3]
	if seg[2]>>4 > 3 || t == nil {
		return 0, d.fail(at, "scan uses Huffman table %d, which is not defined", seg[2]>>4)
	}
	pred, pt := int(seg[3]), int(seg[5]&15)
	if pred < 1 || pred > 7 {
		return 0, d.fail(at, "selection value %d is outside 1..7", pred)
	}
	if pt >= d.precision {
		return 0, d.fail(at, "point transform %d with precision %d", pt, d.precision)
	}
	restartRows := 0
	if d.restart > 0 {
		if d.restart%d.cols != 0 {
			return 0, d.fail(at, "restart interval %d is not a multiple of the %d samples of a line", d.restart, d.cols)
		}
		restartRows = d.restart / d.cols
	}
	br := &bitReader{src: d.src, pos: pos}
	cols := d.cols
	prev, cur := make([]int32, cols), make([]int32, cols)
	initial := int32(1) << uint(d.precision-pt-1)
	first := true
	rst := 0
	for y := range d.rows {
		if restartRows > 0 && y > 0 && y%restartRows == 0 {
			if err := d.restartMarker(br, rst); err != nil {
				return 0, err
			}
			rst++
			first = true
		}
		br.row(t, cur, prev, pred, first, initial)
		if br.bad {
			return 0, d.fail(br.pos, "line %d: a Huffman code not in the table", y)
		}
		if br.n < br.fake {
			return 0, d.fail(br.pos, "entropy-coded data ends in line %d of %d", y+1, d.rows)
		}
		if d.bps == 2 {
			out := d.dst[2*y*cols : 2*(y+1)*cols]
			for x, v := range cur {
				u := uint16(v << uint(pt))
				out[2*x] = byte(u)
				out[2*x+1] = byte(u >> 8)
			}
		} else {
			out := d.dst[y*cols : (y+1)*cols]
			for x, v := range cur {
				out[x] = byte(v << uint(pt))
			}
		}
		first = false
		prev, cur = cur, prev
	}
	return nextMarker(d.src, br.pos), nil
}

// restartMarker skips to the marker that ends restart interval n and
// checks that it is RST(n mod 8).
func (d *jpegDecoder) restartMarker(br *bitReader, n int) error {
	p := nextMarker(d.src, br.pos)
	for p < len(d.src) && d.src[p] == 0xFF && p+1 < len(d.src) && d.src[p+1] == 0xFF {
		p++
	}
	if p+1 >= len(d.src) {
		return d.fail(p, "data ends before restart marker %d", n%8)
	}
	if m := d.src[p+1]; m != 0xD0+byte(n%8) {
		return d.fail(p, "marker FF%02X where RST%d was expected", m, n%8)
	}
	*br = bitReader{src: d.src, pos: p + 2}
	return nil
}

// nextMarker returns the offset of the first 0xFF not followed by 0x00 at
// or after p, or len(src).
func nextMarker(src []byte, p int) int {
	for ; p < len(src); p++ {
		if src[p] == 0xFF && (p+1 >= len(src) || src[p+1] != 0) {
			return p
		}
	}
	return len(src)
}
