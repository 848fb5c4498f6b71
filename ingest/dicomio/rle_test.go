package dicomio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// EncodeRLEForTest exports encodeRLE to the external benchmarks.
var EncodeRLEForTest = encodeRLE

// encodeRLE is a test encoder for RLE Lossless (PS3.5 G.3): src holds
// little-endian, pixel-interleaved samples of bps bytes. Runs of two or
// more equal bytes become replicate runs, the rest literal runs; segments
// are padded to an even length.
func encodeRLE(src []byte, rows, cols, samples, bps int) []byte {
	n := rows * cols
	nseg := samples * bps
	out := make([]byte, rleHeaderBytes, rleHeaderBytes+len(src)+len(src)/64)
	binary.LittleEndian.PutUint32(out, uint32(nseg))
	plane := make([]byte, n)
	for s := range nseg {
		binary.LittleEndian.PutUint32(out[4+4*s:], uint32(len(out)))
		b := (s/bps)*bps + (bps - 1 - s%bps)
		for p := range n {
			plane[p] = src[p*nseg+b]
		}
		out = packBits(out, plane)
		if len(out)%2 == 1 {
			out = append(out, 0x80) // a no-op header as padding
		}
	}
	return out
}

func packBits(out, p []byte) []byte {
	for i := 0; i < len(p); {
		j := i + 1
		for j < len(p) && j-i < 128 && p[j] == p[i] {
			j++
		}
		if j-i >= 2 {
			out = append(out, byte(int8(1-(j-i))), p[i])
			i = j
			continue
		}
		// Literal run up to the next pair of equal bytes.
		j = i + 1
		for j < len(p) && j-i < 128 && !(j+1 < len(p) && p[j] == p[j+1]) {
			j++
		}
		out = append(out, byte(j-i-1))
		out = append(out, p[i:j]...)
		i = j
	}
	return out
}

func TestDecodeRLEHandMade(t *testing.T) {
	header := func(offs ...uint32) []byte {
		h := make([]byte, rleHeaderBytes)
		binary.LittleEndian.PutUint32(h, uint32(len(offs)))
		for i, o := range offs {
			binary.LittleEndian.PutUint32(h[4+4*i:], o)
		}
		return h
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name                      string
		src                       []byte
		rows, cols, samples, bits int
		want                      []byte
		err                       string
	}{
		{"literal", cat(header(64), []byte{3, 1, 2, 3, 4}), 2, 2, 1, 8, []byte{1, 2, 3, 4}, ""},
		{"replicate", cat(header(64), []byte{0xFD, 7}), 1, 4, 1, 8, []byte{7, 7, 7, 7}, ""},
		{"no-op and padding", cat(header(64), []byte{0x80, 0xFF, 9, 0, 5, 0x80, 0x00}), 1, 3, 1, 8, []byte{9, 9, 5}, ""},
		{"16 bits, MSB segment first", cat(header(64, 67), []byte{1, 0x12, 0x34}, []byte{0xFF, 0xAB}),
			1, 2, 1, 16, []byte{0xAB, 0x12, 0xAB, 0x34}, ""},
		{"RGB, segment per sample", cat(header(64, 66, 68), []byte{0, 1}, []byte{0, 2}, []byte{0, 3}),
			1, 1, 3, 8, []byte{1, 2, 3}, ""},
		{"32 bits", cat(header(64, 66, 68, 70), []byte{0, 1}, []byte{0, 2}, []byte{0, 3}, []byte{0, 4}),
			1, 1, 1, 32, []byte{4, 3, 2, 1}, ""},
		{"run past the output is cut", cat(header(64), []byte{0x81, 7}), 1, 3, 1, 8, []byte{7, 7, 7}, ""},
		{"segment count", cat(header(64), []byte{0, 1, 0, 1}), 1, 1, 1, 16, nil, "declares 1 segments, want 2"},
		{"first offset", cat(header(66, 68), []byte{0, 0, 0, 1, 0, 1}), 1, 1, 1, 16, nil, "first segment at 66"},
		{"offset past end", cat(header(64, 900), []byte{0, 1, 0, 1}), 1, 1, 1, 16, nil, "past the 68-byte frame"},
		{"offsets decreasing", cat(header(64, 64), []byte{0, 1, 0, 1}), 1, 1, 1, 16, nil, "does not follow"},
		{"short segment", cat(header(64), []byte{0, 1, 0x80, 0x80}), 1, 2, 1, 8, nil, "segment 1: segment ends after 1 of 2 bytes"},
		{"literal past end", cat(header(64), []byte{5, 1, 2}), 1, 2, 1, 8, nil, "literal run of 6 bytes"},
		{"replicate without byte", cat(header(64), []byte{0, 1, 0xFF}), 1, 2, 1, 8, nil, "replicate run without its byte"},
		{"short header", make([]byte, 10), 1, 1, 1, 8, nil, "cannot hold"},
		{"too small for the size", cat(header(64), []byte{0x81, 7}), 64, 64, 1, 8, nil, "cannot hold 1 segments of 4096 bytes"},
		{"bits", cat(header(64), []byte{0, 1}), 1, 1, 1, 12, nil, "BitsAllocated 12"},
		{"size", cat(header(64), []byte{0, 1}), 5000, 1, 1, 8, nil, "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeRLE(tc.src, tc.rows, tc.cols, tc.samples, tc.bits)
			if tc.err != "" {
				var ce *CodecError
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.As(err, &ce) || ce.Codec != "rle" {
					t.Fatalf("error %v, want a *CodecError mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRLERoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range [][2]int{{1, 1}, {1, 300}, {7, 5}, {64, 64}} {
		for _, samples := range []int{1, 3} {
			for _, bps := range []int{1, 2, 4} {
				rows, cols := size[0], size[1]
				src := make([]byte, rows*cols*samples*bps)
				// Long runs, short runs and noise.
				for i := range src {
					switch (i / 97) % 3 {
					case 0:
						src[i] = 0x42
					case 1:
						src[i] = byte(r.IntN(3))
					default:
						src[i] = byte(r.Uint32())
					}
				}
				enc := encodeRLE(src, rows, cols, samples, bps)
				got, err := DecodeRLE(enc, rows, cols, samples, 8*bps)
				if err != nil {
					t.Fatalf("%d×%d×%d at %d bytes: %v", rows, cols, samples, bps, err)
				}
				if !bytes.Equal(got, src) {
					t.Fatalf("%d×%d×%d at %d bytes: round trip differs", rows, cols, samples, bps)
				}
			}
		}
	}
}

// FuzzRLE decodes arbitrary frames: no panic, typed errors, outputs of
// the declared size, and a decoded frame must survive a round trip
// through the test encoder.
func FuzzRLE(f *testing.F) {
	for _, tc := range compressedFixtures {
		if tc.ts != SyntaxRLELossless {
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
		f.Add(frags[0].data, uint8(l.rows), uint8(l.cols), uint8(l.bits/8))
	}
	f.Add(encodeRLE([]byte{1, 2, 3, 3, 3, 3}, 1, 3, 1, 2), uint8(1), uint8(3), uint8(2))
	f.Fuzz(func(t *testing.T, src []byte, rows, cols, bpsSel uint8) {
		if len(src) > 64<<10 {
			return
		}
		r, c := int(rows%64)+1, int(cols%64)+1
		bps := []int{1, 2, 4}[bpsSel%3]
		samples := 1 + int(rows/64)%3
		got, err := DecodeRLE(src, r, c, samples, 8*bps)
		if err != nil {
			var ce *CodecError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *CodecError", err)
			}
			return
		}
		if len(got) != r*c*samples*bps {
			t.Fatalf("%d bytes for %d×%d×%d at %d bytes", len(got), r, c, samples, bps)
		}
		again, err := DecodeRLE(encodeRLE(got, r, c, samples, bps), r, c, samples, 8*bps)
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("round trip of a decoded frame: %v", err)
		}
	})
}
