// Package pngpair reads and writes CT slices stored as PNG pairs: a 16-bit
// grayscale "<id>_image.png" whose value is HU+1024 and an optional 8-bit
// "<id>_mask.png" sibling whose nonzero pixels mark the nodule (the layout
// of the LIDC-IDRI crops under shared/data/lidc/ctslicing_vois_hu).
//
// The PNG carries no geometry, so slices read here have an assumed pixel
// spacing (DefaultSpacingMm, SpacingAssumed=true) and no slice position.
package pngpair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

const (
	// ImageSuffix ends the name of the HU image of a pair.
	ImageSuffix = "_image.png"
	// MaskSuffix ends the name of the ground-truth mask of a pair.
	MaskSuffix = "_mask.png"
	// Source is the SliceMeta.Source of slices read here.
	Source = "png"
	// DefaultSpacingMm is the pixel spacing assumed for PNG slices, which
	// carry none (a typical chest CT in-plane spacing).
	DefaultSpacingMm = 0.7
	// HUOffset is added to HU to get the stored 16-bit value.
	HUOffset = 1024
	// MaxFileBytes bounds the size of a PNG file read here. A 4096×4096
	// 16-bit image is 32 MiB raw; PNG never needs much more than that.
	MaxFileBytes = 64 << 20
)

var (
	// ErrBitDepth reports an image PNG that is not 16-bit grayscale.
	ErrBitDepth = errors.New("pngpair: image is not 16-bit grayscale")
	// ErrTooLarge reports a PNG whose declared size exceeds imgx.MaxSide or
	// whose file exceeds MaxFileBytes.
	ErrTooLarge = errors.New("pngpair: image too large")
	// ErrMaskShape reports a mask whose size differs from its image.
	ErrMaskShape = errors.New("pngpair: mask size differs from image")
	// ErrName reports a path that does not end in ImageSuffix.
	ErrName = errors.New("pngpair: not an " + ImageSuffix + " file")
)

// FormatError describes a PNG that could not be decoded. Err is one of the
// sentinel errors of this package or the decoder's error.
type FormatError struct {
	Path string
	Msg  string
	Err  error
}

func (e *FormatError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("pngpair: %s: %v", e.Path, e.Err)
	}
	return fmt.Sprintf("pngpair: %s: %s", e.Path, e.Msg)
}

// Unwrap returns the underlying sentinel or decoder error.
func (e *FormatError) Unwrap() error { return e.Err }

// ID returns the slice id of an image path: the path relative to root,
// slash-separated, without ImageSuffix. With root "" (or a path outside
// root) it is the base name without the suffix.
func ID(path, root string) string {
	rel := filepath.Base(path)
	if root != "" {
		if r, err := filepath.Rel(root, path); err == nil && r != ".." && !strings.HasPrefix(r, ".."+string(filepath.Separator)) {
			rel = r
		}
	}
	return strings.TrimSuffix(filepath.ToSlash(rel), ImageSuffix)
}

// MaskPath returns the mask sibling of an image path.
func MaskPath(imagePath string) string {
	return strings.TrimSuffix(imagePath, ImageSuffix) + MaskSuffix
}

// Read reads the pair whose image is path and emits one Item. A file that
// cannot be read is emitted as an Item with Err set (and Meta.Id), and Read
// returns nil so that a folder scan goes on; Read returns an error only
// when ctx is done or fn fails. A missing mask gives an Item with a nil
// Mask; a mask of another size gives an Item with Err.
func Read(ctx context.Context, path, root string, fn ingest.EmitFunc) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	meta := &lungsegv1.SliceMeta{
		Id:             ID(path, root),
		Source:         Source,
		SpacingRowMm:   DefaultSpacingMm,
		SpacingColMm:   DefaultSpacingMm,
		SpacingAssumed: true,
	}
	it := ingest.Item{Meta: meta}
	if !strings.HasSuffix(path, ImageSuffix) {
		it.Err = &FormatError{Path: path, Err: ErrName, Msg: "name does not end in " + ImageSuffix}
		return fn(it)
	}
	b, err := readCapped(path, MaxFileBytes)
	var hu *imgx.HU
	var cl clamped
	if err == nil {
		hu, cl, err = decodeHU(path, b)
	}
	if err != nil {
		it.Err = err
		return fn(it)
	}
	if cl.n > 0 {
		meta.Warnings = append(meta.Warnings, fmt.Sprintf("%d of %d pixels above 32767 HU clamped to it (the first, at pixel %d (row %d, col %d), is %d HU)",
			cl.n, len(hu.Pix), cl.first, cl.first/hu.Cols, cl.first%hu.Cols, cl.val))
	}
	meta.Rows, meta.Cols = int32(hu.Rows), int32(hu.Cols)
	it.HU = hu
	mask, err := ReadMask(MaskPath(path))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		it.Err = err
		it.HU = nil
	case mask.Rows != hu.Rows || mask.Cols != hu.Cols:
		it.Err = &FormatError{Path: MaskPath(path), Err: ErrMaskShape,
			Msg: fmt.Sprintf("mask is %d×%d but the image is %d×%d", mask.Rows, mask.Cols, hu.Rows, hu.Cols)}
		it.HU = nil
	default:
		it.Mask = mask
	}
	return fn(it)
}

// readCapped reads a whole file of at most max bytes.
func readCapped(path string, max int64) ([]byte, error) {
	f, err := ingest.OpenFile(path) // never blocks on a named pipe
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, &FormatError{Path: path, Msg: "not a regular file", Err: fs.ErrInvalid}
	}
	if st.Size() > max {
		return nil, &FormatError{Path: path, Err: ErrTooLarge,
			Msg: fmt.Sprintf("file is %d bytes, over the %d-byte limit", st.Size(), max)}
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("pngpair: reading %s: %w", path, err)
	}
	return b, nil
}

// decodeChecked decodes a PNG after checking its declared size, so that a
// forged header cannot make the decoder allocate a huge image.
func decodeChecked(path string, b []byte) (image.Image, image.Config, error) {
	cfg, err := png.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return nil, cfg, &FormatError{Path: path, Msg: "decoding PNG header: " + err.Error(), Err: err}
	}
	if err := imgx.CheckSize(cfg.Height, cfg.Width); err != nil {
		return nil, cfg, &FormatError{Path: path, Msg: err.Error(), Err: ErrTooLarge}
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		return nil, cfg, &FormatError{Path: path, Msg: "decoding PNG: " + err.Error(), Err: err}
	}
	return img, cfg, nil
}

// ReadHU reads a 16-bit grayscale PNG whose value is HU+HUOffset. Values
// above 32767+HUOffset are clamped to 32767 HU.
func ReadHU(path string) (*imgx.HU, error) {
	b, err := readCapped(path, MaxFileBytes)
	if err != nil {
		return nil, err
	}
	return DecodeHU(path, b)
}

// DecodeHU decodes the bytes of an image PNG; path is used in errors.
func DecodeHU(path string, b []byte) (*imgx.HU, error) {
	hu, _, err := decodeHU(path, b)
	return hu, err
}

// clamped counts the pixels above 32767 HU and keeps the first.
type clamped struct {
	n, first, val int
}

// decodeHU is DecodeHU that also counts the clamped pixels.
func decodeHU(path string, b []byte) (*imgx.HU, clamped, error) {
	var cl clamped
	cfg, err := png.DecodeConfig(bytes.NewReader(b))
	if err != nil {
		return nil, cl, &FormatError{Path: path, Msg: "decoding PNG header: " + err.Error(), Err: err}
	}
	if cfg.ColorModel != color.Gray16Model {
		return nil, cl, &FormatError{Path: path, Err: ErrBitDepth,
			Msg: fmt.Sprintf("image must be 16-bit grayscale (value = HU+%d), got %s", HUOffset, modelName(cfg.ColorModel))}
	}
	img, _, err := decodeChecked(path, b)
	if err != nil {
		return nil, cl, err
	}
	g, ok := img.(*image.Gray16)
	if !ok {
		return nil, cl, &FormatError{Path: path, Err: ErrBitDepth, Msg: fmt.Sprintf("decoded as %T, want *image.Gray16", img)}
	}
	rows, cols := g.Rect.Dy(), g.Rect.Dx()
	hu := &imgx.HU{Rows: rows, Cols: cols, Pix: make([]int16, rows*cols)}
	for r := 0; r < rows; r++ {
		row := g.Pix[r*g.Stride : r*g.Stride+2*cols]
		out := hu.Pix[r*cols : (r+1)*cols]
		for c := range out {
			v := int(row[2*c])<<8 | int(row[2*c+1])
			v -= HUOffset
			if v > 32767 {
				if cl.n == 0 {
					cl.first, cl.val = r*cols+c, v
				}
				cl.n++
				v = 32767
			}
			out[c] = int16(v)
		}
	}
	return hu, cl, nil
}

// ReadMask reads a mask PNG: any pixel with a nonzero red, green or blue
// value is set. A missing file gives an error matching fs.ErrNotExist.
// Masks are normally 8-bit grayscale, but any PNG colour model is read.
func ReadMask(path string) (*imgx.Mask, error) {
	b, err := readCapped(path, MaxFileBytes)
	if err != nil {
		return nil, err
	}
	return DecodeMask(path, b)
}

// DecodeMask decodes the bytes of a mask PNG; path is used in errors.
func DecodeMask(path string, b []byte) (*imgx.Mask, error) {
	img, cfg, err := decodeChecked(path, b)
	if err != nil {
		return nil, err
	}
	rows, cols := cfg.Height, cfg.Width
	m := imgx.NewMask(rows, cols)
	switch g := img.(type) {
	case *image.Gray:
		for r := 0; r < rows; r++ {
			row := g.Pix[r*g.Stride : r*g.Stride+cols]
			for c, v := range row {
				if v != 0 {
					m.Pix[r*cols+c] = 1
				}
			}
		}
	default:
		b := img.Bounds()
		for r := 0; r < rows; r++ {
			for c := 0; c < cols; c++ {
				cr, cg, cb, _ := img.At(b.Min.X+c, b.Min.Y+r).RGBA()
				if cr|cg|cb != 0 {
					m.Pix[r*cols+c] = 1
				}
			}
		}
	}
	return m, nil
}

func modelName(m color.Model) string {
	switch m {
	case color.GrayModel:
		return "8-bit grayscale"
	case color.Gray16Model:
		return "16-bit grayscale"
	case color.RGBAModel, color.NRGBAModel:
		return "8-bit colour"
	case color.RGBA64Model, color.NRGBA64Model:
		return "16-bit colour"
	}
	if _, ok := m.(color.Palette); ok {
		return "paletted colour"
	}
	return fmt.Sprintf("colour model %T", m)
}

// EncodeHU returns hu as a 16-bit grayscale PNG of HU+HUOffset. Values
// below -HUOffset are clamped to 0 (that is, -1024 HU).
func EncodeHU(hu *imgx.HU) ([]byte, error) {
	if err := imgx.CheckSize(hu.Rows, hu.Cols); err != nil {
		return nil, err
	}
	if len(hu.Pix) != hu.Rows*hu.Cols {
		return nil, fmt.Errorf("%w: %d pixels for %d×%d", imgx.ErrShape, len(hu.Pix), hu.Rows, hu.Cols)
	}
	g := image.NewGray16(image.Rect(0, 0, hu.Cols, hu.Rows))
	for i, v := range hu.Pix {
		u := int(v) + HUOffset
		if u < 0 {
			u = 0
		}
		g.Pix[2*i] = uint8(u >> 8)
		g.Pix[2*i+1] = uint8(u)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, g); err != nil {
		return nil, fmt.Errorf("pngpair: encoding image: %w", err)
	}
	return buf.Bytes(), nil
}

// EncodeMask returns m as an 8-bit grayscale PNG with 0 and 255.
func EncodeMask(m *imgx.Mask) ([]byte, error) {
	if err := imgx.CheckSize(m.Rows, m.Cols); err != nil {
		return nil, err
	}
	if len(m.Pix) != m.Rows*m.Cols {
		return nil, fmt.Errorf("%w: %d pixels for %d×%d", imgx.ErrShape, len(m.Pix), m.Rows, m.Cols)
	}
	g := image.NewGray(image.Rect(0, 0, m.Cols, m.Rows))
	for i, v := range m.Pix {
		if v != 0 {
			g.Pix[i] = 255
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, g); err != nil {
		return nil, fmt.Errorf("pngpair: encoding mask: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteMask writes m to path as an 8-bit PNG, creating parent folders.
func WriteMask(path string, m *imgx.Mask) error {
	b, err := EncodeMask(m)
	if err != nil {
		return err
	}
	return writeFile(path, b)
}

// Write writes dir/<id>_image.png and, when mask is not nil,
// dir/<id>_mask.png, creating folders as needed (id may contain '/').
func Write(dir, id string, hu *imgx.HU, mask *imgx.Mask) error {
	if mask != nil && (mask.Rows != hu.Rows || mask.Cols != hu.Cols) {
		return fmt.Errorf("%w: mask %d×%d, image %d×%d", ErrMaskShape, mask.Rows, mask.Cols, hu.Rows, hu.Cols)
	}
	b, err := EncodeHU(hu)
	if err != nil {
		return err
	}
	base := filepath.Join(dir, filepath.FromSlash(id))
	if err := writeFile(base+ImageSuffix, b); err != nil {
		return err
	}
	if mask == nil {
		return nil
	}
	return WriteMask(base+MaskSuffix, mask)
}

func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("pngpair: creating folder: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("pngpair: writing %s: %w", path, err)
	}
	return nil
}
