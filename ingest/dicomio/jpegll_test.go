package dicomio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// EncodeJPEGLosslessForTest exports encodeJPEGLossless to the external
// benchmarks.
var EncodeJPEGLosslessForTest = func(samples []uint16, rows, cols, precision, pred int) []byte {
	return encodeJPEGLossless(samples, jpegParams{rows: rows, cols: cols, precision: precision, pred: pred})
}

// jpegParams configures the test encoder.
type jpegParams struct {
	rows, cols, precision, pred, pt int
	restart                         int // in samples; 0 for none
	table                           int // Huffman table id 0..3
}

// encodeJPEGLossless is a test encoder for T.81 process 14 with one
// component: it predicts, codes the differences with a Huffman table
// optimised for them (T.81 Annex K.2), and writes SOI, DHT, SOF3, DRI,
// SOS, the entropy-coded data with RST markers, and EOI. Samples are
// shifted right by the point transform first.
func encodeJPEGLossless(samples []uint16, p jpegParams) []byte {
	rows, cols := p.rows, p.cols
	v := make([]int32, len(samples))
	for i, s := range samples {
		v[i] = int32(s >> uint(p.pt))
	}
	// Differences, with the decoder's prediction rules.
	diffs := make([]int32, len(v))
	restartRows := 0
	if p.restart > 0 {
		restartRows = p.restart / cols
	}
	initial := int32(1) << uint(p.precision-p.pt-1)
	for y := range rows {
		first := y == 0 || (restartRows > 0 && y%restartRows == 0)
		for x := range cols {
			i := y*cols + x
			var px int32
			switch {
			case first && x == 0:
				px = initial
			case first:
				px = v[i-1]
			case x == 0:
				px = v[i-cols]
			default:
				ra, rb, rc := v[i-1], v[i-cols], v[i-cols-1]
				px = [8]int32{0, ra, rb, rc, ra + rb - rc, ra + (rb-rc)>>1, rb + (ra-rc)>>1, (ra + rb) >> 1}[p.pred]
			}
			d := (v[i] - px) & 0xFFFF
			if d > 32768 {
				d -= 65536
			}
			diffs[i] = d
		}
	}
	category := func(d int32) int {
		if d < 0 {
			d = -d
		}
		n := 0
		for d > 0 {
			n++
			d >>= 1
		}
		return n
	}
	var freq [257]int
	for _, d := range diffs {
		freq[category(d)]++
	}
	bits, vals := huffmanCodeLengths(freq)
	code, size := canonicalCodes(bits, vals)

	out := []byte{0xFF, 0xD8}
	seg := func(m byte, body ...byte) {
		out = append(out, 0xFF, m, byte((len(body)+2)>>8), byte(len(body)+2))
		out = append(out, body...)
	}
	seg(0xC4, append(append([]byte{byte(p.table)}, bits[1:17]...), vals...)...)
	seg(0xC3, byte(p.precision), byte(rows>>8), byte(rows), byte(cols>>8), byte(cols), 1, 7, 0x11, 0)
	if p.restart > 0 {
		seg(0xDD, byte(p.restart>>8), byte(p.restart))
	}
	seg(0xDA, 1, 7, byte(p.table<<4), byte(p.pred), 0, byte(p.pt))
	var acc uint64
	n := 0
	put := func(c uint32, s int) {
		acc = acc<<uint(s) | uint64(c)&(1<<uint(s)-1)
		n += s
		for n >= 8 {
			b := byte(acc >> uint(n-8))
			out = append(out, b)
			if b == 0xFF {
				out = append(out, 0)
			}
			n -= 8
		}
	}
	flush := func() {
		if n > 0 {
			put(0x7F, 8-n)
		}
	}
	for i, d := range diffs {
		if restartRows > 0 && i > 0 && i%(restartRows*cols) == 0 {
			flush()
			out = append(out, 0xFF, 0xD0+byte((i/(restartRows*cols)-1)%8))
		}
		s := category(d)
		put(code[s], size[s])
		if s > 0 && s < 16 {
			e := d
			if e < 0 {
				e += 1<<uint(s) - 1
			}
			put(uint32(e), s)
		}
	}
	flush()
	return append(out, 0xFF, 0xD9)
}

// huffmanCodeLengths builds BITS (bits[l] codes of length l) and HUFFVAL
// from symbol frequencies, T.81 K.2 (figures K.1 to K.4).
func huffmanCodeLengths(f [257]int) (bits []byte, vals []byte) {
	freq := f
	freq[256] = 1 // reserves the all-ones code
	var codesize [257]int
	var others [257]int
	for i := range others {
		others[i] = -1
	}
	for {
		v1, v2 := -1, -1
		for i := range freq {
			if freq[i] > 0 && (v1 < 0 || freq[i] <= freq[v1]) {
				v1 = i
			}
		}
		for i := range freq {
			if freq[i] > 0 && i != v1 && (v2 < 0 || freq[i] <= freq[v2]) {
				v2 = i
			}
		}
		if v2 < 0 {
			break
		}
		freq[v1] += freq[v2]
		freq[v2] = 0
		codesize[v1]++
		for others[v1] >= 0 {
			v1 = others[v1]
			codesize[v1]++
		}
		others[v1] = v2
		codesize[v2]++
		for others[v2] >= 0 {
			v2 = others[v2]
			codesize[v2]++
		}
	}
	var b [33]int
	for _, c := range codesize {
		if c > 0 {
			b[c]++
		}
	}
	for i := 32; i > 16; i-- {
		for b[i] > 0 {
			j := i - 2
			for b[j] == 0 {
				j--
			}
			b[i] -= 2
			b[i-1]++
			b[j+1] += 2
			b[j]--
		}
	}
	i := 16
	for b[i] == 0 {
		i--
	}
	b[i]--
	bits = make([]byte, 17)
	for l := 1; l <= 16; l++ {
		bits[l] = byte(b[l])
	}
	for l := 1; l <= 32; l++ {
		for s := range 256 {
			if codesize[s] == l {
				vals = append(vals, byte(s))
			}
		}
	}
	return bits, vals
}

// canonicalCodes returns the code and length of each symbol.
func canonicalCodes(bits, vals []byte) (code [17]uint32, size [17]int) {
	c, k := uint32(0), 0
	for l := 1; l <= 16; l++ {
		for range int(bits[l]) {
			code[vals[k]], size[vals[k]] = c, l
			c++
			k++
		}
		c <<= 1
	}
	return code, size
}

func TestJPEGLosslessRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	sizes := [][2]int{{1, 1}, {1, 9}, {6, 1}, {13, 17}}
	count := 0
	for _, precision := range []int{2, 8, 12, 16} {
		for pred := 1; pred <= 7; pred++ {
			for _, pt := range []int{0, 1} {
				for _, sz := range sizes {
					for _, restartRows := range []int{0, 1, 4} {
						rows, cols := sz[0], sz[1]
						smooth := (pred+pt+restartRows)%2 == 0
						samples := make([]uint16, rows*cols)
						for i := range samples {
							if smooth {
								samples[i] = uint16((i*7 + r.IntN(5)) % (1 << precision))
							} else {
								samples[i] = uint16(r.IntN(1 << precision))
							}
						}
						p := jpegParams{rows: rows, cols: cols, precision: precision, pred: pred, pt: pt,
							restart: restartRows * cols, table: (pred + precision) % 4}
						enc := encodeJPEGLossless(samples, p)
						for _, bits := range []int{8, 16} {
							if precision > bits {
								continue
							}
							got, err := DecodeJPEGLossless(enc, rows, cols, bits)
							if err != nil {
								t.Fatalf("%+v into %d bits: %v", p, bits, err)
							}
							for i, s := range samples {
								want := s >> uint(pt) << uint(pt)
								var g uint16
								if bits == 16 {
									g = binary.LittleEndian.Uint16(got[2*i:])
								} else {
									g = uint16(got[i])
								}
								if g != want {
									t.Fatalf("%+v into %d bits: sample %d is %d, want %d", p, bits, i, g, want)
								}
							}
							count++
						}
					}
				}
			}
		}
	}
	t.Logf("%d round trips", count)
}

// TestJPEGLosslessCategory16 covers differences of 32768 (category 16,
// no extra bits) and the modulo-2^16 reconstruction.
func TestJPEGLosslessCategory16(t *testing.T) {
	samples := []uint16{0, 32768, 0, 65535, 1, 32769, 65535, 0}
	for pred := 1; pred <= 7; pred++ {
		enc := encodeJPEGLossless(samples, jpegParams{rows: 2, cols: 4, precision: 16, pred: pred})
		got, err := DecodeJPEGLossless(enc, 2, 4, 16)
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range samples {
			if g := binary.LittleEndian.Uint16(got[2*i:]); g != s {
				t.Fatalf("predictor %d: sample %d is %d, want %d", pred, i, g, s)
			}
		}
	}
}

// TestJPEGLosslessStuffing makes entropy data full of 0xFF bytes (a table
// whose codes for one category are all ones) and checks the decoder
// unstuffs them on both its fast and slow paths.
func TestJPEGLosslessStuffing(t *testing.T) {
	samples := make([]uint16, 64*64)
	for i := range samples {
		samples[i] = uint16(i * 4099 % 65536) // large differences: long codes and extra bits
	}
	enc := encodeJPEGLossless(samples, jpegParams{rows: 64, cols: 64, precision: 16, pred: 1})
	if bytes.Count(enc, []byte{0xFF, 0x00}) == 0 {
		t.Fatal("no stuffed byte in the test stream")
	}
	got, err := DecodeJPEGLossless(enc, 64, 64, 16)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range samples {
		if g := binary.LittleEndian.Uint16(got[2*i:]); g != s {
			t.Fatalf("sample %d is %d, want %d", i, g, s)
		}
	}
}

// withMarker returns a copy of src with the body of the first marker m
// segment changed by edit (its length is rewritten).
func withMarker(t *testing.T, src []byte, m byte, edit func([]byte) []byte) []byte {
	t.Helper()
	for i := 2; i+4 <= len(src); {
		l := int(binary.BigEndian.Uint16(src[i+2:]))
		if src[i+1] == m {
			body := edit(bytes.Clone(src[i+4 : i+2+l]))
			out := append(bytes.Clone(src[:i]), 0xFF, m, byte((len(body)+2)>>8), byte(len(body)+2))
			return append(append(out, body...), src[i+2+l:]...)
		}
		i += 2 + l
	}
	t.Fatalf("no marker FF%02X", m)
	return nil
}

func TestJPEGLosslessErrors(t *testing.T) {
	samples := make([]uint16, 8*16)
	for i := range samples {
		samples[i] = uint16(i * 37 % 4096)
	}
	good := encodeJPEGLossless(samples, jpegParams{rows: 8, cols: 16, precision: 12, pred: 1, restart: 32, table: 2})
	if _, err := DecodeJPEGLossless(good, 8, 16, 16); err != nil {
		t.Fatal(err)
	}
	sof := bytes.Index(good, []byte{0xFF, 0xC3})
	sos := bytes.Index(good, []byte{0xFF, 0xDA})
	rst0 := bytes.Index(good, []byte{0xFF, 0xD0})
	set := func(i int, b byte) []byte { c := bytes.Clone(good); c[i] = b; return c }
	ones := encodeJPEGLossless(samples, jpegParams{rows: 8, cols: 16, precision: 12, pred: 1})
	dataStart := bytes.Index(ones, []byte{0xFF, 0xDA}) + 10
	allOnes := append(bytes.Clone(ones[:dataStart]), bytes.Repeat([]byte{0xFF, 0x00}, 400)...)
	for _, tc := range []struct {
		name       string
		src        []byte
		rows, bits int
		want       error
		msg        string
	}{
		{"no SOI", good[2:], 8, 16, ErrCorruptPixels, "no SOI"},
		{"baseline", set(sof+1, 0xC0), 8, 16, ErrPixelFormat, "baseline"},
		{"arithmetic", set(sof+1, 0xCB), 8, 16, ErrPixelFormat, "lossless, arithmetic"},
		{"three components", withMarker(t, good, 0xC3, func(b []byte) []byte {
			b[5] = 3
			return append(b, 2, 0x11, 0, 3, 0x11, 0)
		}), 8, 16, ErrPixelFormat, "3 components"},
		{"size", good, 9, 16, ErrCorruptPixels, "image is 8×16 but the DICOM header says 9×16"},
		{"precision over bits", good, 8, 8, ErrPixelFormat, "precision 12 over BitsAllocated 8"},
		{"precision 17", set(sof+4, 17), 8, 16, ErrCorruptPixels, "precision 17"},
		{"SOS before SOF", slices.Concat(good[:sof], good[sof+2+int(binary.BigEndian.Uint16(good[sof+2:])):]), 8, 16, ErrCorruptPixels, "SOS before SOF3"},
		{"empty SOF", withMarker(t, good, 0xC3, func([]byte) []byte { return nil }), 8, 16, ErrCorruptPixels, "SOF3 segment of 0 bytes"},
		{"undefined table", set(sos+6, 0x30), 8, 16, ErrCorruptPixels, "Huffman table 3, which is not defined"},
		{"selection value 0", set(sos+7, 0), 8, 16, ErrCorruptPixels, "selection value 0"},
		{"selection value 8", set(sos+7, 8), 8, 16, ErrCorruptPixels, "selection value 8"},
		{"point transform", set(sos+9, 12), 8, 16, ErrCorruptPixels, "point transform 12"},
		{"other component", set(sos+5, 9), 8, 16, ErrCorruptPixels, "component 9"},
		{"restart not per line", withMarker(t, good, 0xDD, func([]byte) []byte { return []byte{0, 20} }), 8, 16, ErrCorruptPixels, "not a multiple"},
		{"wrong RST", set(rst0+1, 0xD3), 8, 16, ErrCorruptPixels, "where RST0 was expected"},
		{"missing RST", good[:rst0], 8, 16, ErrCorruptPixels, "restart marker 0"},
		{"truncated", ones[:dataStart+40], 8, 16, ErrCorruptPixels, "entropy-coded data ends in line"},
		{"code not in table", allOnes, 8, 16, ErrCorruptPixels, "not in the table"},
		{"too short for the size", good[:200], 4000, 16, ErrCorruptPixels, "cannot hold"},
		{"EOI first", []byte{0xFF, 0xD8, 0xFF, 0xD9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 8, 16, ErrCorruptPixels, "EOI before any scan"},
		{"second scan", append(bytes.Clone(good[:len(good)-2]), good[sos:]...), 8, 16, ErrCorruptPixels, "a second scan"},
		{"bad DHT", withMarker(t, good, 0xC4, func(b []byte) []byte {
			return append(append([]byte{b[0], 3}, make([]byte, 15)...), 0, 1, 2)
		}), 8, 16, ErrCorruptPixels, "too many codes of 1 bits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeJPEGLossless(tc.src, tc.rows, 16, tc.bits)
			var ce *CodecError
			if !errors.Is(err, tc.want) || !errors.As(err, &ce) || ce.Codec != "jpeg-lossless" || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %v, want %v mentioning %q", err, tc.want, tc.msg)
			}
		})
	}
	// A missing EOI after a complete scan, APPn and COM segments are fine.
	extra := append([]byte{0xFF, 0xD8, 0xFF, 0xE1, 0, 4, 1, 2, 0xFF, 0xFE, 0, 3, 'x'}, good[2:len(good)-2]...)
	if _, err := DecodeJPEGLossless(extra, 8, 16, 16); err != nil {
		t.Errorf("APP1, COM and no EOI: %v", err)
	}
}

// FuzzJPEGLossless decodes arbitrary streams: no panic, typed errors,
// outputs of the declared size, and a decoded image must survive a round
// trip through the test encoder.
func FuzzJPEGLossless(f *testing.F) {
	for _, tc := range compressedFixtures {
		if tc.ts == SyntaxRLELossless {
			continue
		}
		b, err := os.ReadFile(filepath.Join(fixtures, tc.file))
		if err != nil {
			f.Fatal(err)
		}
		_, start, _ := scan(b)
		_, frags, err := encapsulatedValue(b, start)
		if err != nil {
			f.Fatal(err)
		}
		l, _ := layoutOf(f, b)
		f.Add(frags[0].data, uint8(l.rows), uint8(l.cols), l.bits == 16)
	}
	samples := []uint16{0, 32768, 0, 65535, 1, 32769, 65535, 0}
	f.Add(encodeJPEGLossless(samples, jpegParams{rows: 2, cols: 4, precision: 16, pred: 5, restart: 4}), uint8(2), uint8(4), true)
	f.Fuzz(func(t *testing.T, src []byte, rows, cols uint8, sixteen bool) {
		if len(src) > 64<<10 {
			return
		}
		r, c := int(rows%64)+1, int(cols%64)+1
		bits := 8
		if sixteen {
			bits = 16
		}
		got, err := DecodeJPEGLossless(src, r, c, bits)
		if err != nil {
			var ce *CodecError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *CodecError", err)
			}
			return
		}
		if len(got) != r*c*bits/8 {
			t.Fatalf("%d bytes for %d×%d at %d bits", len(got), r, c, bits)
		}
		v := make([]uint16, r*c)
		for i := range v {
			if bits == 16 {
				v[i] = binary.LittleEndian.Uint16(got[2*i:])
			} else {
				v[i] = uint16(got[i])
			}
		}
		again, err := DecodeJPEGLossless(encodeJPEGLossless(v, jpegParams{rows: r, cols: c, precision: bits, pred: 4}), r, c, bits)
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("round trip of a decoded image: %v", err)
		}
	})
}
