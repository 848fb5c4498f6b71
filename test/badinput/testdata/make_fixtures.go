//go:build ignore

// make_fixtures writes the protobuf and PNG fixtures of the bad-input
// corpus into this folder. Run from the repository root:
//
//	go run test/badinput/testdata/make_fixtures.go
//
// Each fixture is one kind of broken or hostile message or file; the
// corpus table in ../corpus_test.go says what each must produce.
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/objref"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

const dir = "test/badinput/testdata"

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func write(rel string, b []byte) {
	must(os.WriteFile(filepath.Join(dir, rel), b, 0o644))
}

func marshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	must(err)
	return b
}

// replayID is the replay the protobuf fixtures claim to belong to (the
// pipeline test reads their error events under it).
const replayID = "badproto"

func meta(id string, rows, cols int32) *lungsegv1.SliceMeta {
	return &lungsegv1.SliceMeta{Id: id, ReplayId: replayID, Rows: rows, Cols: cols, SpacingRowMm: 0.7, SpacingColMm: 0.7, Models: []string{"tiny"}}
}

func hu(n int) []byte { return make([]byte, 2*n) }

func f32(vals ...float32) []byte {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func main() {
	good := marshal(&lungsegv1.Slice{Meta: meta("good", 8, 8), Hu: hu(64)})
	// Slices (preprocess input, lung.slices.raw).
	write("proto/slice_truncated.bin", good[:len(good)/2])
	write("proto/slice_no_meta.bin", marshal(&lungsegv1.Slice{Hu: hu(64)}))
	write("proto/slice_short_pixels.bin", marshal(&lungsegv1.Slice{Meta: meta("slice_short_pixels", 64, 64), Hu: hu(50)}))
	write("proto/slice_huge_dims.bin", marshal(&lungsegv1.Slice{Meta: meta("slice_huge_dims", 100000, 100000), Hu: hu(64)}))
	write("proto/slice_negative_dims.bin", marshal(&lungsegv1.Slice{Meta: meta("slice_negative_dims", -8, 8), Hu: hu(64)}))
	write("proto/slice_bad_mask.bin", marshal(&lungsegv1.Slice{Meta: meta("slice_bad_mask", 8, 8), Hu: hu(64), HasMask: true, MaskBits: []byte{1}}))
	write("proto/slice_unknown_model.bin", marshal(&lungsegv1.Slice{Meta: &lungsegv1.SliceMeta{Id: "slice_unknown_model", ReplayId: replayID, Rows: 8, Cols: 8, Models: []string{"no-such-model"}}, Hu: hu(64)}))
	// Field 1 (meta, a message) sent with the varint wire type.
	wrong := protowire.AppendTag(nil, 1, protowire.VarintType)
	wrong = protowire.AppendVarint(wrong, 7)
	write("proto/slice_wrong_wiretype.bin", wrong)
	// A length prefix far beyond the end of the message.
	long := protowire.AppendTag(nil, 2, protowire.BytesType)
	long = protowire.AppendVarint(long, 1<<40)
	write("proto/slice_length_overflow.bin", append(long, 0, 1, 2))
	r := rand.New(rand.NewPCG(8, 8))
	junk := make([]byte, 4096)
	for i := range junk {
		junk[i] = byte(r.UintN(256))
	}
	write("proto/slice_random_bytes.bin", junk)
	// Model outputs (score input, lung.masks.<model>).
	out := func(o *lungsegv1.ModelOutput) []byte { o.Model, o.Threshold = "tiny", 0.5; return marshal(o) }
	write("proto/output_no_meta.bin", out(&lungsegv1.ModelOutput{Height: 2, Width: 2, Prob: f32(0, 1, 0, 1)}))
	write("proto/output_prob_short.bin", out(&lungsegv1.ModelOutput{Meta: meta("output_prob_short", 2, 2), Height: 2, Width: 2, Prob: f32(0, 1)}))
	write("proto/output_huge_dims.bin", out(&lungsegv1.ModelOutput{Meta: meta("output_huge_dims", 2, 2), Height: 1 << 20, Width: 1 << 20, Prob: f32(0, 1, 0, 1)}))
	write("proto/output_huge_slice.bin", out(&lungsegv1.ModelOutput{Meta: meta("output_huge_slice", 1<<20, 1<<20), Height: 2, Width: 2, Prob: f32(0, 1, 0, 1)}))
	write("proto/output_bad_truth.bin", out(&lungsegv1.ModelOutput{Meta: meta("output_bad_truth", 2, 2), Height: 2, Width: 2, Prob: f32(0, 1, 0, 1), HasMask: true, MaskBits: []byte{}}))
	write("proto/output_truncated.bin", out(&lungsegv1.ModelOutput{Meta: meta("x", 2, 2), Height: 2, Width: 2, Prob: f32(0, 1, 0, 1)})[:9])
	// Object references (pkg/objref: a body over the payload limit
	// travels as objref.Magic and an ObjectRef) that cannot be resolved:
	// the object is not there; the bucket is not the pixel bucket.
	ref := func(r *lungsegv1.ObjectRef) []byte { return append(append([]byte{}, objref.Magic...), marshal(r)...) }
	zero := strings.Repeat("0", 64)
	write("proto/ref_missing.bin", ref(&lungsegv1.ObjectRef{Bucket: bus.PixelsBucket, Key: "msg/0000000000000000/ref_missing", Sha256: zero, Size: 2 << 20}))
	write("proto/ref_bad_bucket.bin", ref(&lungsegv1.ObjectRef{Bucket: "elsewhere", Key: "msg/0000000000000000/ref_bad_bucket", Sha256: zero, Size: 2 << 20}))

	// PNG pairs (<id>_image.png with <id>_mask.png). Names start with
	// png_ so that their slice ids (the name without extension) differ
	// from the DICOM fixtures' in the same folder.
	var buf bytes.Buffer
	img := image.NewGray16(image.Rect(0, 0, 16, 16))
	for i := range img.Pix {
		img.Pix[i] = 0x04
	}
	must(png.Encode(&buf, img))
	full := buf.Bytes()
	write("png/png_truncated_image.png", full[:len(full)/2])
	write("png/png_truncated_mask.png", maskPNG(16, 16))
	// An IHDR declaring 100000×100000 (CRC fixed up): must be refused
	// before allocating.
	huge := append([]byte(nil), full...)
	binary.BigEndian.PutUint32(huge[16:], 100000)
	binary.BigEndian.PutUint32(huge[20:], 100000)
	binary.BigEndian.PutUint32(huge[29:], crc(huge[12:29]))
	write("png/png_huge_ihdr_image.png", huge)
	write("png/png_huge_ihdr_mask.png", maskPNG(16, 16))
	write("png/png_notpng_image.png", []byte("this is not a PNG file at all, just text with a .png name\n"))
	write("png/png_notpng_mask.png", maskPNG(16, 16))
	// An RGB image where 16-bit grey HU+1024 is expected.
	buf.Reset()
	rgb := image.NewRGBA(image.Rect(0, 0, 16, 16))
	for i := range rgb.Pix {
		rgb.Pix[i] = 200
	}
	rgb.Set(0, 0, color.RGBA{1, 2, 3, 255})
	must(png.Encode(&buf, rgb))
	write("png/png_rgb_image.png", buf.Bytes())
	write("png/png_rgb_mask.png", maskPNG(16, 16))
	// A mask of another size than its image.
	buf.Reset()
	must(png.Encode(&buf, img))
	write("png/png_wrongmask_image.png", buf.Bytes())
	write("png/png_wrongmask_mask.png", maskPNG(8, 8))
	_ = imgx.MaxSide
}

func maskPNG(w, h int) []byte {
	var buf bytes.Buffer
	must(png.Encode(&buf, image.NewGray(image.Rect(0, 0, w, h))))
	return buf.Bytes()
}

func crc(b []byte) uint32 {
	var table [256]uint32
	for i := range table {
		c := uint32(i)
		for k := 0; k < 8; k++ {
			if c&1 != 0 {
				c = 0xedb88320 ^ (c >> 1)
			} else {
				c >>= 1
			}
		}
		table[i] = c
	}
	c := ^uint32(0)
	for _, v := range b {
		c = table[byte(c)^v] ^ (c >> 8)
	}
	return ^c
}
