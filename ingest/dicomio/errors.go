package dicomio

import (
	"errors"
	"fmt"
)

// Sentinel errors. Read reports them wrapped in a *FormatError, so test
// them with errors.Is and get the path and details with errors.As.
var (
	// ErrNotDICOM reports a file without the DICOM Part 10 preamble and
	// "DICM" magic, or without a usable file meta header. Raw datasets
	// without a preamble are not accepted (their transfer syntax would
	// have to be guessed).
	ErrNotDICOM = errors.New("dicomio: not a DICOM Part 10 file")
	// ErrTruncated reports a file that ends inside an element, or an
	// element whose declared length runs past the end of the file or of
	// its enclosing sequence.
	ErrTruncated = errors.New("dicomio: truncated or inconsistent lengths")
	// ErrCompressed reports a transfer syntax this package does not read:
	// all but the three native ones, RLE Lossless and JPEG Lossless
	// process 14 (lossy JPEG, JPEG-LS, JPEG 2000, deflate, unknown).
	ErrCompressed = errors.New("dicomio: compressed or unsupported transfer syntax")
	// ErrNoPixelData reports a DICOM object without pixel data (a
	// structured report, an RT plan...).
	ErrNoPixelData = errors.New("dicomio: no pixel data, not an image")
	// ErrNotCT reports an image whose Modality is present and not CT.
	ErrNotCT = errors.New("dicomio: modality is not CT")
	// ErrTooLarge reports declared image sizes beyond imgx.MaxSide, frame
	// counts beyond MaxFrames, or files beyond MaxFileBytes.
	ErrTooLarge = errors.New("dicomio: declared size too large")
	// ErrPixelFormat reports pixel data that is not one sample of 8 or 16
	// bits per pixel, or whose length does not match the image size.
	ErrPixelFormat = errors.New("dicomio: unsupported pixel format")
	// ErrMaskShape reports a ground-truth mask whose size differs from the
	// slice.
	ErrMaskShape = errors.New("dicomio: mask size differs from the slice")
)

// FormatError describes why a file was rejected. Err is one of the
// sentinel errors above (or the parser's error, for malformed elements).
type FormatError struct {
	Path string
	// Offset is the byte offset in the file where the problem was found,
	// or -1 when it is not about one place.
	Offset int64
	Msg    string
	Err    error
}

func (e *FormatError) Error() string {
	if e.Offset >= 0 {
		return fmt.Sprintf("dicomio: %s: at byte %d: %s", e.Path, e.Offset, e.Msg)
	}
	return fmt.Sprintf("dicomio: %s: %s", e.Path, e.Msg)
}

// Unwrap returns the sentinel error.
func (e *FormatError) Unwrap() error { return e.Err }

func formatErr(path string, sentinel error, format string, args ...any) *FormatError {
	return &FormatError{Path: path, Offset: -1, Msg: fmt.Sprintf(format, args...), Err: sentinel}
}
