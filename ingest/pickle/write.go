package pickle

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// frameTarget is CPython's FRAME_SIZE_TARGET: frames are committed once
// they reach it, and payloads at least this long are written outside any
// frame.
const frameTarget = 64 << 10

// ErrRow reports a row Write cannot write (bad size, missing mask, arrays
// of different lengths).
var ErrRow = errors.New("pickle: bad row for writing")

// Write writes rows as a pandas DataFrame pickle laid out as pandas 1.5
// writes the Mendeley dataset with protocol 4: one object block holding
// label1 (str), mask (int8 arrays), hu_array_old and hu_array (float64
// arrays), and series_uid (str) when the first row has a Series, columns
// as an object Index, rows as a RangeIndex. Both Read and
// pd.read_pickle read the result.
func Write(w io.Writer, rows []Row) error {
	return WriteFunc(w, len(rows), func(i int) (*Row, error) { return &rows[i], nil })
}

// WriteFunc writes n rows like Write without holding them all: the object
// block is pickled column by column (all labels, then all masks, ...), so
// row is called once per row and column pass, four times per row (five
// with a series column, and once more for row 0), and must return the
// same row each time for the same i.
func WriteFunc(w io.Writer, n int, row func(i int) (*Row, error)) error {
	if n < 0 {
		return fmt.Errorf("%w: %d rows", ErrRow, n)
	}
	e := &encoder{w: bufio.NewWriterSize(w, frameTarget)}
	e.op(opProto, 4)
	e.global("pandas.core.frame", "DataFrame")
	e.op(')', 0x81) // EMPTY_TUPLE NEWOBJ
	e.memoize()
	e.op('}') // EMPTY_DICT: the NDFrame state
	e.memoize()
	e.op('(')
	e.str("_mgr")
	// BlockManager((block,), [columns, index])
	e.global("pandas.core.internals.managers", "BlockManager")
	e.global("pandas._libs.internals", "_unpickle_block")
	columns := []string{ColLabel, ColMask, ColHU, ColHULung}
	if n > 0 {
		r, err := row(0)
		if err != nil {
			return fmt.Errorf("writing row 0: %w", err)
		}
		if r.Series != "" {
			columns = append(columns, ColSeries)
		}
	}
	// The object block: _reconstruct(ndarray, (0,), b'b') + BUILD.
	e.reconstruct()
	e.op('(')
	e.int(1)
	e.int(len(columns))
	e.int(n)
	e.op(0x86) // TUPLE2
	e.dtype("O8", '|', 63)
	e.op(0x89) // NEWFALSE: C order
	e.op(']')
	e.memoize()
	cells := 0
	batch := func() {
		if cells > 0 {
			e.op('e') // APPENDS
			cells = 0
		}
	}
	item := func() {
		if cells == 0 {
			e.op('(')
		}
	}
	added := func() {
		cells++
		if cells == 1000 { // CPython's _BATCHSIZE
			batch()
		}
		e.boundary()
	}
	labels := map[string]int{} // memo of label1 and series_uid strings
	for pass := range columns {
		for i := range n {
			r, err := row(i)
			if err != nil {
				return fmt.Errorf("writing row %d: %w", i, err)
			}
			if err := checkRow(r); err != nil {
				return fmt.Errorf("writing row %d: %w", i, err)
			}
			item()
			switch columns[pass] {
			case ColLabel, ColSeries:
				v := r.Label
				if columns[pass] == ColSeries {
					v = r.Series
				}
				if k, ok := labels[v]; ok {
					e.get(k)
				} else {
					e.str(v)
					labels[v] = e.memoize()
				}
			case ColMask:
				b := make([]byte, len(r.Mask.Pix))
				for k, v := range r.Mask.Pix {
					if v != 0 {
						b[k] = 1
					}
				}
				e.array(r.Rows, r.Cols, "i1", '|', b)
			case ColHU, ColHULung:
				v := r.HU
				if columns[pass] == ColHULung && r.HULung != nil {
					v = r.HULung
				}
				b := make([]byte, 8*len(v))
				for k, x := range v {
					binary.LittleEndian.PutUint64(b[8*k:], math.Float64bits(x))
				}
				e.array(r.Rows, r.Cols, "f8", '<', b)
			}
			added()
		}
	}
	batch()
	e.op('t', 'b') // TUPLE (the state) BUILD
	// Placement slice(0, 4, 1), ndim 2.
	e.global("builtins", "slice")
	e.int(0)
	e.int(len(columns))
	e.int(1)
	e.op(0x87, 'R') // TUPLE3 REDUCE
	e.int(2)
	e.op(0x87, 'R', 0x85) // TUPLE3 REDUCE (the block) TUPLE1 (blocks)
	// Axes: [Index(columns), RangeIndex(0, n)].
	e.op(']')
	e.memoize()
	e.op('(')
	newIndex := e.global("pandas.core.indexes.base", "_new_Index")
	e.global("pandas.core.indexes.base", "Index")
	e.op('}')
	e.memoize()
	e.op('(')
	e.str("data")
	e.reconstruct()
	e.op('(')
	e.int(1)
	e.int(len(columns))
	e.op(0x85) // TUPLE1
	e.get(e.dtypes["O8"])
	e.op(0x89, ']')
	e.memoize()
	e.op('(')
	for _, c := range columns {
		e.str(c)
	}
	e.op('e', 't', 'b') // APPENDS TUPLE BUILD
	e.str("name")
	e.op('N', 'u', 0x86, 'R') // None SETITEMS TUPLE2 REDUCE
	e.get(newIndex)
	e.global("pandas.core.indexes.range", "RangeIndex")
	e.op('}')
	e.memoize()
	e.op('(')
	e.str("name")
	e.op('N')
	e.str("start")
	e.int(0)
	e.str("stop")
	e.int(n)
	e.str("step")
	e.int(1)
	e.op('u', 0x86, 'R') // SETITEMS TUPLE2 REDUCE
	e.op('e', 0x86, 'R') // APPENDS (axes) TUPLE2 REDUCE (the BlockManager)
	e.memoize()
	e.str("_typ")
	e.str("dataframe")
	e.str("_metadata")
	e.op(']')
	e.str("attrs")
	e.op('}')
	e.str("_flags")
	e.op('}')
	e.str("allows_duplicate_labels")
	e.op(0x88, 's') // NEWTRUE SETITEM
	e.op('u', 'b')  // SETITEMS BUILD
	e.op(opStop)
	e.commit()
	if e.err != nil {
		return e.err
	}
	return e.w.Flush()
}

// checkRow validates a row before it is written.
func checkRow(r *Row) error {
	if err := imgx.CheckSize(r.Rows, r.Cols); err != nil {
		return fmt.Errorf("%w: %v", ErrRow, err)
	}
	n := r.Rows * r.Cols
	switch {
	case r.Mask == nil:
		return fmt.Errorf("%w: no mask", ErrRow)
	case r.Mask.Rows != r.Rows || r.Mask.Cols != r.Cols || len(r.Mask.Pix) != n:
		return fmt.Errorf("%w: mask %d×%d for a %d×%d row", ErrRow, r.Mask.Rows, r.Mask.Cols, r.Rows, r.Cols)
	case len(r.HU) != n:
		return fmt.Errorf("%w: %d HU values for %d×%d", ErrRow, len(r.HU), r.Rows, r.Cols)
	case r.HULung != nil && len(r.HULung) != n:
		return fmt.Errorf("%w: %d lung HU values for %d×%d", ErrRow, len(r.HULung), r.Rows, r.Cols)
	}
	return nil
}

// encoder writes protocol 4 opcodes with CPython's framing.
type encoder struct {
	w      *bufio.Writer
	frame  []byte
	memo   int
	err    error
	shared map[string]int // memo index of globals and constants
	dtypes map[string]int // memo index of dtypes by numpy str
}

func (e *encoder) op(b ...byte) { e.frame = append(e.frame, b...) }

// boundary commits the frame once it is large enough, as CPython does
// between objects.
func (e *encoder) boundary() {
	if len(e.frame) >= frameTarget {
		e.commit()
	}
}

func (e *encoder) commit() {
	if len(e.frame) == 0 || e.err != nil {
		e.frame = e.frame[:0]
		return
	}
	var h [9]byte
	h[0] = opFrame
	binary.LittleEndian.PutUint64(h[1:], uint64(len(e.frame)))
	if _, err := e.w.Write(h[:]); err != nil {
		e.err = err
	} else if _, err := e.w.Write(e.frame); err != nil {
		e.err = err
	}
	e.frame = e.frame[:0]
}

func (e *encoder) memoize() int {
	e.op(0x94)
	e.memo++
	return e.memo - 1
}

func (e *encoder) get(k int) {
	if k < 256 {
		e.op('h', byte(k))
		return
	}
	e.op('j')
	e.frame = binary.LittleEndian.AppendUint32(e.frame, uint32(k))
}

func (e *encoder) int(v int) {
	switch {
	case v >= 0 && v <= 0xff:
		e.op(opBinInt1, byte(v))
	case v >= 0 && v <= 0xffff:
		e.op('M', byte(v), byte(v>>8))
	case v >= math.MinInt32 && v <= math.MaxInt32:
		e.op(opBinInt)
		e.frame = binary.LittleEndian.AppendUint32(e.frame, uint32(int32(v)))
	default:
		e.op(opLong1, 8)
		e.frame = binary.LittleEndian.AppendUint64(e.frame, uint64(v))
	}
}

func (e *encoder) str(s string) {
	if len(s) < 256 {
		e.op(opShortBinUni, byte(len(s)))
	} else {
		e.op(opBinUnicode)
		e.frame = binary.LittleEndian.AppendUint32(e.frame, uint32(len(s)))
	}
	e.frame = append(e.frame, s...)
}

// global pushes module.name, memoized, and returns its memo index.
func (e *encoder) global(module, name string) int {
	if e.shared == nil {
		e.shared = map[string]int{}
	}
	key := module + "." + name
	if k, ok := e.shared[key]; ok {
		e.get(k)
		return k
	}
	e.str(module)
	e.memoize()
	e.str(name)
	e.memoize()
	e.op(0x93) // STACK_GLOBAL
	k := e.memoize()
	e.shared[key] = k
	return k
}

// bytes pushes a bytes object; long payloads go outside frames.
func (e *encoder) bytes(b []byte) {
	var h []byte
	switch {
	case len(b) < 256:
		h = []byte{opShortBinBytes, byte(len(b))}
	case uint64(len(b)) <= math.MaxUint32:
		h = binary.LittleEndian.AppendUint32([]byte{opBinBytes}, uint32(len(b)))
	default:
		h = binary.LittleEndian.AppendUint64([]byte{opBinBytes8}, uint64(len(b)))
	}
	if len(b) < frameTarget {
		e.op(h...)
		e.op(b...)
		return
	}
	e.commit()
	if e.err != nil {
		return
	}
	if _, err := e.w.Write(h); err != nil {
		e.err = err
	} else if _, err := e.w.Write(b); err != nil {
		e.err = err
	}
}

// reconstruct pushes _reconstruct(ndarray, (0,), b'b'), the empty array
// that the following BUILD fills.
func (e *encoder) reconstruct() {
	e.global("numpy.core.multiarray", "_reconstruct")
	e.global("numpy", "ndarray")
	e.int(0)
	e.op(0x85) // TUPLE1
	if k, ok := e.shared["b'b'"]; ok {
		e.get(k)
	} else {
		e.bytes([]byte("b"))
		e.shared["b'b'"] = e.memoize()
	}
	e.op(0x87, 'R') // TUPLE3 REDUCE
}

// dtype pushes numpy.dtype(str, False, True) with its state, or the memo
// entry of an earlier one.
func (e *encoder) dtype(str string, order byte, flags int) {
	if e.dtypes == nil {
		e.dtypes = map[string]int{}
	}
	if k, ok := e.dtypes[str]; ok {
		e.get(k)
		return
	}
	e.global("numpy", "dtype")
	e.str(str)
	e.op(0x89, 0x88, 0x87, 'R') // False True TUPLE3 REDUCE
	e.dtypes[str] = e.memoize()
	e.op('(')
	e.int(3)
	e.str(string(order))
	e.op('N', 'N', 'N')
	e.int(-1)
	e.int(-1)
	e.int(flags)
	e.op('t', 'b') // TUPLE BUILD
}

// array pushes a C-ordered 2-D array of the given dtype and raw bytes.
func (e *encoder) array(rows, cols int, dt string, order byte, data []byte) {
	e.reconstruct()
	e.op('(')
	e.int(1)
	e.int(rows)
	e.int(cols)
	e.op(0x86) // TUPLE2
	e.dtype(dt, order, 0)
	e.op(0x89) // NEWFALSE: C order
	e.bytes(data)
	e.op('t', 'b') // TUPLE BUILD
}
