package pickle

import (
	"encoding/binary"
	"fmt"
	"math/big"
	"strconv"
	"strings"

	"github.com/nlpodyssey/gopickle/types"
)

// The object model the unpickler builds. Each allowed global is a Go value
// implementing gopickle's Callable (REDUCE), PyNewable (NEWOBJ) and the
// objects it returns PyStateSettable (BUILD). None of them does anything
// but record its arguments; interpretation happens after the pass, in
// frame.go, where each array cell is decoded only when its row is read.

// globals is the allow-list: module.name → the value the unpickler gets.
// numpy writes numpy.core.* (numpy 1.x) or numpy._core.* (numpy 2.x).
var globals = map[string]any{
	"numpy.core.multiarray._reconstruct":  reconstructFunc{},
	"numpy._core.multiarray._reconstruct": reconstructFunc{},
	"numpy.ndarray":                       ndarrayClass{},
	"numpy.dtype":                         dtypeClass{},
	"numpy.core.numeric._frombuffer":      frombufferFunc{},
	"numpy._core.numeric._frombuffer":     frombufferFunc{},
	"_codecs.encode":                      codecsEncode{},
	"builtins.slice":                      sliceClass{},
	"__builtin__.slice":                   sliceClass{},
	"builtins.bytes":                      bytesClass{},
	"__builtin__.bytes":                   bytesClass{},

	"pandas.core.frame.DataFrame":                 dataFrameClass{},
	"pandas.core.internals.managers.BlockManager": blockManagerClass{},
	"pandas._libs.internals._unpickle_block":      blockFunc{},
	"pandas.core.internals.blocks.new_block":      blockFunc{},
	"pandas.core.indexes.base._new_Index":         newIndexFunc{},
	"pandas.core.indexes.base.Index":              indexClass{"Index"},
	"pandas.core.indexes.range.RangeIndex":        indexClass{"RangeIndex"},
	"pandas.core.indexes.numeric.Int64Index":      indexClass{"Int64Index"},
	"pandas.core.indexes.numeric.UInt64Index":     indexClass{"UInt64Index"},
	"pandas.core.indexes.numeric.Float64Index":    indexClass{"Float64Index"},
	"pandas.core.indexes.numeric.NumericIndex":    indexClass{"NumericIndex"},
}

// findClass resolves a global against the allow-list.
func findClass(module, name string) (any, error) {
	if v, ok := globals[module+"."+name]; ok {
		return v, nil
	}
	return nil, &ClassError{Module: module, Name: name}
}

func argErr(what string, args []any) error {
	return fmt.Errorf("%w: %s called with %d arguments", ErrCorrupt, what, len(args))
}

// ---- numpy ----------------------------------------------------------------

// dtype is a numpy dtype: kind 'b' (bool), 'i', 'u', 'f' or 'O' (object),
// with its item size and byte order. Unsupported dtypes keep their string
// and an error, reported where an array of them is decoded.
type dtype struct {
	str   string
	kind  byte
	size  int
	order binary.ByteOrder // nil where it does not apply (size 1, object)
	err   error
}

type dtypeClass struct{}

// Call is numpy.dtype(str, align, copy), as numpy's dtype.__reduce__ writes it.
func (dtypeClass) Call(args ...any) (any, error) {
	if len(args) < 1 {
		return nil, argErr("numpy.dtype", args)
	}
	s, ok := args[0].(string)
	if !ok {
		return &dtype{err: fmt.Errorf("%w: dtype from %T", ErrCell, args[0])}, nil
	}
	return parseDtype(s), nil
}

func parseDtype(s string) *dtype {
	d := &dtype{str: s, order: binary.LittleEndian}
	t := s
	if t != "" && strings.ContainsRune("<>|=", rune(t[0])) {
		d.setOrder(t[0])
		t = t[1:]
	}
	if len(t) < 2 {
		d.err = fmt.Errorf("%w: unsupported dtype %q", ErrCell, s)
		return d
	}
	size, err := strconv.Atoi(t[1:])
	if err != nil {
		d.err = fmt.Errorf("%w: unsupported dtype %q", ErrCell, s)
		return d
	}
	d.kind, d.size = t[0], size
	switch {
	case d.kind == 'b' && size == 1, d.kind == 'i' && intSize(size), d.kind == 'u' && intSize(size),
		d.kind == 'f' && (size == 4 || size == 8), d.kind == 'O' && (size == 4 || size == 8):
	default:
		d.err = fmt.Errorf("%w: unsupported dtype %q", ErrCell, s)
	}
	if size == 1 || d.kind == 'O' {
		d.order = nil
	}
	return d
}

func intSize(n int) bool { return n == 1 || n == 2 || n == 4 || n == 8 }

func (d *dtype) setOrder(c byte) {
	switch c {
	case '<':
		d.order = binary.LittleEndian
	case '>':
		d.order = binary.BigEndian
	case '=':
		d.order = binary.NativeEndian
	case '|':
		d.order = nil
	}
}

// PySetState is dtype.__setstate__: (version, byteorder, subarray, names,
// fields, elsize, alignment, flags[, metadata]).
func (d *dtype) PySetState(state any) error {
	t, ok := state.(*types.Tuple)
	if !ok || t.Len() < 2 {
		d.err = fmt.Errorf("%w: dtype state %T", ErrCell, state)
		return nil
	}
	s := []any(*t)
	order, _ := s[1].(string)
	if len(order) != 1 || !strings.ContainsRune("<>|=", rune(order[0])) {
		d.err = fmt.Errorf("%w: dtype byte order %q", ErrCell, order)
		return nil
	}
	if len(s) >= 4 && (s[2] != nil || s[3] != nil) {
		d.err = fmt.Errorf("%w: structured or subarray dtype %q", ErrCell, d.str)
		return nil
	}
	if d.size > 1 && d.kind != 'O' {
		d.setOrder(order[0])
		if d.order == nil {
			d.err = fmt.Errorf("%w: dtype %q with byte order '|'", ErrCell, d.str)
		}
	}
	return nil
}

// ndarray is a numpy array as pickled: shape, dtype, memory order and the
// data, which stays in the file (a span) unless it was short enough to be
// inlined. Object arrays hold their elements, in C order.
type ndarray struct {
	built   bool
	shape   []int
	dtype   *dtype
	fortran bool
	data    any   // *span or []byte
	objs    []any // object dtype
	err     error // a state this reader could not take; reported on use
}

type ndarrayClass struct{}

type reconstructFunc struct{}

// Call is numpy.core.multiarray._reconstruct(ndarray, (0,), b'b'): an empty
// array that BUILD then fills.
func (reconstructFunc) Call(args ...any) (any, error) {
	if len(args) != 3 {
		return nil, argErr("_reconstruct", args)
	}
	if _, ok := args[0].(ndarrayClass); !ok {
		return nil, fmt.Errorf("%w: _reconstruct of %T, not numpy.ndarray", ErrCorrupt, args[0])
	}
	return &ndarray{}, nil
}

// PySetState is ndarray.__setstate__: (version, shape, dtype, is_fortran,
// rawdata), or the 4-tuple without version. Problems are recorded, not
// returned, so that one bad cell fails its row and not the file.
func (a *ndarray) PySetState(state any) error {
	a.built = true
	a.err = a.setState(state)
	return nil
}

func (a *ndarray) setState(state any) error {
	t, ok := state.(*types.Tuple)
	if !ok {
		return fmt.Errorf("%w: ndarray state is %T", ErrCell, state)
	}
	s := []any(*t)
	if len(s) == 5 {
		s = s[1:]
	}
	if len(s) != 4 {
		return fmt.Errorf("%w: ndarray state of %d items", ErrCell, len(*t))
	}
	shape, err := shapeOf(s[0])
	if err != nil {
		return err
	}
	dt, ok := s[1].(*dtype)
	if !ok {
		return fmt.Errorf("%w: ndarray dtype is %T", ErrCell, s[1])
	}
	fortran, ok := s[2].(bool)
	if !ok {
		return fmt.Errorf("%w: ndarray is_fortran is %T", ErrCell, s[2])
	}
	a.shape, a.dtype, a.fortran = shape, dt, fortran
	return a.setData(s[3])
}

func (a *ndarray) setData(v any) error {
	if a.dtype.kind == 'O' {
		l, ok := v.(*types.List)
		if !ok {
			return fmt.Errorf("%w: object array data is %T", ErrCell, v)
		}
		a.objs = []any(*l)
		return nil
	}
	switch d := v.(type) {
	case *span, []byte:
		a.data = d
	case string: // a short py2 str, or a short str through latin1
		b, err := latin1(d)
		if err != nil {
			return err
		}
		a.data = b
	default:
		return fmt.Errorf("%w: array data is %T", ErrCell, v)
	}
	return nil
}

// shapeOf reads a shape tuple. The element count is bounded here so that
// later size arithmetic cannot overflow; whether it is plausible for an
// image is checked where the cell is decoded.
func shapeOf(v any) ([]int, error) {
	t, ok := v.(*types.Tuple)
	if !ok {
		return nil, fmt.Errorf("%w: shape is %T", ErrCell, v)
	}
	shape := make([]int, t.Len())
	total := int64(1)
	for i, x := range *t {
		n, ok := x.(int)
		if !ok || n < 0 {
			return nil, fmt.Errorf("%w: shape %v", ErrCell, []any(*t))
		}
		if int64(n) > 1<<40 || total*int64(n) > 1<<40 {
			return nil, fmt.Errorf("%w: shape %v has more than 2^40 elements", ErrTooLarge, []any(*t))
		}
		total *= int64(n)
		shape[i] = n
	}
	return shape, nil
}

type frombufferFunc struct{}

// Call is numpy.core.numeric._frombuffer(buf, dtype, shape, order), what
// numpy writes for protocol 5.
func (frombufferFunc) Call(args ...any) (any, error) {
	if len(args) != 4 {
		return nil, argErr("_frombuffer", args)
	}
	a := &ndarray{built: true}
	a.err = func() error {
		dt, ok := args[1].(*dtype)
		if !ok {
			return fmt.Errorf("%w: _frombuffer dtype is %T", ErrCell, args[1])
		}
		if dt.kind == 'O' {
			return fmt.Errorf("%w: _frombuffer of an object dtype", ErrCell)
		}
		shape, err := shapeOf(args[2])
		if err != nil {
			return err
		}
		order, _ := args[3].(string)
		if order != "C" && order != "F" {
			return fmt.Errorf("%w: _frombuffer order %q", ErrCell, order)
		}
		a.shape, a.dtype, a.fortran = shape, dt, order == "F"
		return a.setData(args[0])
	}()
	return a, nil
}

type codecsEncode struct{}

// Call is _codecs.encode(str, 'latin1'): how protocol 2 writes bytes.
func (codecsEncode) Call(args ...any) (any, error) {
	if len(args) != 2 {
		return nil, argErr("_codecs.encode", args)
	}
	enc, _ := args[1].(string)
	switch strings.ToLower(enc) {
	case "latin1", "latin-1", "iso-8859-1", "iso8859-1":
	default:
		return nil, fmt.Errorf("%w: _codecs.encode to %q", ErrCorrupt, enc)
	}
	switch s := args[0].(type) {
	case string:
		return latin1(s)
	case *span:
		if s.enc != encUTF8 {
			return nil, fmt.Errorf("%w: _codecs.encode of bytes", ErrCorrupt)
		}
		return &span{off: s.off, n: s.n, enc: encLatin1}, nil
	default:
		return nil, fmt.Errorf("%w: _codecs.encode of %T", ErrCorrupt, args[0])
	}
}

// latin1 encodes a str whose code points are all below 256.
func latin1(s string) ([]byte, error) {
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xff { // invalid UTF-8 decodes as U+FFFD, also refused
			return nil, fmt.Errorf("%w: text is not latin1", ErrCell)
		}
		b = append(b, byte(r))
	}
	return b, nil
}

type bytesClass struct{}

// Call is bytes(): protocol 2 writes an empty bytes object this way.
func (bytesClass) Call(args ...any) (any, error) {
	if len(args) != 0 {
		return nil, argErr("bytes", args)
	}
	return []byte{}, nil
}

// pySlice is a Python slice(start, stop, step); nil fields are None.
type pySlice struct{ start, stop, step any }

type sliceClass struct{}

// Call is slice(start, stop, step).
func (sliceClass) Call(args ...any) (any, error) {
	if len(args) < 1 || len(args) > 3 {
		return nil, argErr("slice", args)
	}
	if len(args) == 1 {
		return &pySlice{stop: args[0]}, nil
	}
	s := &pySlice{start: args[0], stop: args[1]}
	if len(args) == 3 {
		s.step = args[2]
	}
	return s, nil
}

// ---- pandas ---------------------------------------------------------------

// dataFrame is pandas.core.frame.DataFrame: NEWOBJ, then BUILD with the
// NDFrame state dict {"_mgr": BlockManager, "_typ": "dataframe", ...}
// (pandas 1.1 and later; older pandas used "_data").
type dataFrame struct {
	mgr any
}

type dataFrameClass struct{}

// PyNew is DataFrame.__new__.
func (dataFrameClass) PyNew(args ...any) (any, error) { return &dataFrame{}, nil }

// PySetState is NDFrame.__setstate__.
func (d *dataFrame) PySetState(state any) error {
	dict, ok := state.(*types.Dict)
	if !ok {
		return fmt.Errorf("%w: DataFrame state is %T", ErrLayout, state)
	}
	for _, k := range []string{"_mgr", "_data"} {
		if v, ok := dict.Get(k); ok {
			d.mgr = v
			return nil
		}
	}
	return fmt.Errorf("%w: DataFrame state has no _mgr", ErrLayout)
}

// blockManager is pandas' BlockManager. pandas 1.4 and later (1.5.3 and
// 2.x checked against their internals.pyx) pickle it through __reduce__ as
// BlockManager(blocks, axes); older pandas through NEWOBJ and __setstate__
// with (axes, values, items, {"0.14.1": {"axes": ..., "blocks": [{"values":
// ..., "mgr_locs": ...}]}}), which newer pandas still reads. Both are taken.
type blockManager struct {
	blocks []*block
	axes   []any
}

type blockManagerClass struct{}

// Call is BlockManager(blocks, axes).
func (blockManagerClass) Call(args ...any) (any, error) {
	if len(args) < 2 {
		return nil, argErr("BlockManager", args)
	}
	m := &blockManager{}
	blocks, ok := seq(args[0])
	if !ok {
		return nil, fmt.Errorf("%w: BlockManager blocks are %T", ErrLayout, args[0])
	}
	for _, b := range blocks {
		blk, ok := b.(*block)
		if !ok {
			return nil, fmt.Errorf("%w: BlockManager block is %T", ErrLayout, b)
		}
		m.blocks = append(m.blocks, blk)
	}
	if m.axes, ok = seq(args[1]); !ok {
		return nil, fmt.Errorf("%w: BlockManager axes are %T", ErrLayout, args[1])
	}
	return m, nil
}

// PyNew is BlockManager.__new__ (pre-1.4 pickles).
func (blockManagerClass) PyNew(args ...any) (any, error) { return &blockManager{}, nil }

// PySetState is BlockManager.__setstate__ for the "0.14.1" state.
func (m *blockManager) PySetState(state any) error {
	t, ok := state.(*types.Tuple)
	if !ok || t.Len() < 4 {
		return fmt.Errorf("%w: BlockManager state is %T", ErrLayout, state)
	}
	extra, ok := t.Get(3).(*types.Dict)
	if !ok {
		return fmt.Errorf("%w: BlockManager state without the 0.14.1 entry", ErrLayout)
	}
	v, ok := extra.Get("0.14.1")
	st, ok2 := v.(*types.Dict)
	if !ok || !ok2 {
		return fmt.Errorf("%w: BlockManager state without the 0.14.1 entry", ErrLayout)
	}
	axes, _ := st.Get("axes")
	blocks, _ := st.Get("blocks")
	if m.axes, ok = seq(axes); !ok {
		return fmt.Errorf("%w: BlockManager axes are %T", ErrLayout, axes)
	}
	bl, ok := seq(blocks)
	if !ok {
		return fmt.Errorf("%w: BlockManager blocks are %T", ErrLayout, blocks)
	}
	for _, b := range bl {
		d, ok := b.(*types.Dict)
		if !ok {
			return fmt.Errorf("%w: BlockManager block state is %T", ErrLayout, b)
		}
		values, _ := d.Get("values")
		locs, _ := d.Get("mgr_locs")
		m.blocks = append(m.blocks, &block{values: values, placement: locs})
	}
	return nil
}

// block is one pandas Block: a 2-D array of (len(placement), rows) and the
// column positions it holds (a slice or an int array).
type block struct {
	values    any
	placement any
}

type blockFunc struct{}

// Call is pandas._libs.internals._unpickle_block(values, placement, ndim)
// (and new_block with the same positional arguments).
func (blockFunc) Call(args ...any) (any, error) {
	if len(args) < 2 {
		return nil, argErr("_unpickle_block", args)
	}
	return &block{values: args[0], placement: args[1]}, nil
}

// index is a pandas Index as _new_Index(cls, dict) rebuilds it.
type index struct {
	class string
	dict  *types.Dict
}

type indexClass struct{ name string }

type newIndexFunc struct{}

// Call is pandas.core.indexes.base._new_Index(cls, d).
func (newIndexFunc) Call(args ...any) (any, error) {
	if len(args) != 2 {
		return nil, argErr("_new_Index", args)
	}
	c, ok := args[0].(indexClass)
	if !ok {
		return nil, fmt.Errorf("%w: _new_Index of %T", ErrLayout, args[0])
	}
	d, ok := args[1].(*types.Dict)
	if !ok {
		return nil, fmt.Errorf("%w: _new_Index state is %T", ErrLayout, args[1])
	}
	return &index{class: c.name, dict: d}, nil
}

// seq returns the items of a tuple or list.
func seq(v any) ([]any, bool) {
	switch s := v.(type) {
	case *types.Tuple:
		return []any(*s), true
	case *types.List:
		return []any(*s), true
	}
	return nil, false
}

// asInt returns v as an int when it is a pickled integer (or bool).
func asInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case bool:
		if n {
			return 1, true
		}
		return 0, true
	case *big.Int:
		if n.IsInt64() {
			return int(n.Int64()), true
		}
	}
	return 0, false
}
