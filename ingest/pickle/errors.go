package pickle

import (
	"errors"
	"fmt"
)

var (
	// ErrUnknownClass reports a global (module.name) that is not on the
	// reader's allow-list. The reader never calls anything a pickle names;
	// an unknown global stops the whole file.
	ErrUnknownClass = errors.New("pickle: class not on the allow-list")
	// ErrTruncated reports a file that ends before its pickle does.
	ErrTruncated = errors.New("pickle: truncated file")
	// ErrTooLarge reports a declared length, count or object budget beyond
	// the reader's limits, caught before anything of that size is
	// allocated. (A length beyond the end of the file is ErrTruncated.)
	ErrTooLarge = errors.New("pickle: declared size too large")
	// ErrCorrupt reports a byte stream that is not a pickle this reader
	// accepts: an unknown or unsupported opcode, a malformed argument, an
	// object of the wrong type where the layout needs another.
	ErrCorrupt = errors.New("pickle: malformed pickle")
	// ErrLayout reports a well-formed pickle that is not a DataFrame in the
	// Mendeley layout (no DataFrame, a missing hu_array_old column, ...).
	ErrLayout = errors.New("pickle: not a Mendeley-layout DataFrame")
	// ErrCell reports one array cell that cannot be decoded: wrong type,
	// unsupported dtype, bad shape, data not matching its shape. It is a
	// per-row error: the reader goes on with the next row.
	ErrCell = errors.New("pickle: bad array cell")
)

// ClassError names the global a pickle referred to that is not on the
// allow-list. It unwraps to ErrUnknownClass.
type ClassError struct {
	Module, Name string
}

// Error names the refused global.
func (e *ClassError) Error() string {
	return fmt.Sprintf("pickle: class %s.%s not on the allow-list", e.Module, e.Name)
}

// Unwrap returns ErrUnknownClass.
func (e *ClassError) Unwrap() error { return ErrUnknownClass }

// OpError locates a stream-level failure: the file offset of the opcode
// being read and the opcode byte. It unwraps to the underlying error
// (ErrTruncated, ErrTooLarge, ErrCorrupt, an I/O error).
type OpError struct {
	Offset int64
	Op     byte
	Err    error
}

// Error gives the opcode, its offset and the cause.
func (e *OpError) Error() string {
	return fmt.Sprintf("pickle: opcode 0x%02x at offset %d: %v", e.Op, e.Offset, e.Err)
}

// Unwrap returns the underlying error.
func (e *OpError) Unwrap() error { return e.Err }

// RowError is the error of one DataFrame row, set as ingest.Item.Err.
type RowError struct {
	Row int    // 0-based position in the frame
	ID  string // the row's index label
	Err error
}

// Error gives the row, its id and the cause.
func (e *RowError) Error() string {
	return fmt.Sprintf("pickle: decoding row %d (id %s): %v", e.Row, e.ID, e.Err)
}

// Unwrap returns the underlying error.
func (e *RowError) Unwrap() error { return e.Err }
