package pickle

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	gopickle "github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/pkg/imgx"
)

// Column names of the Mendeley layout.
const (
	ColLabel  = "label1"       // Lung-RADS class, str
	ColMask   = "mask"         // nodule mask, int8 0/1 array
	ColHU     = "hu_array_old" // slice in HU, float array
	ColHULung = "hu_array"     // HU times the automatic lung mask
	// ColSeries is the series column Write writes when rows have one.
	ColSeries = "series_uid"
)

// SeriesColumns are the columns, in order of preference, that say which
// series (or patient) a row belongs to; the Mendeley layout has none. The
// first one present gives Meta.SeriesUid, so that the findings stage
// groups that series' rows into nodules. A patient id column gives
// "patient-" and a digest of the id, never the id itself.
var SeriesColumns = []string{ColSeries, "SeriesInstanceUID", "series_instance_uid", "patient_id", "PatientID"}

const (
	// maxIndexLen bounds index arrays and block placements read at open.
	maxIndexLen = 1 << 24
	// maxColumns bounds the columns of a frame.
	maxColumns = 1 << 16
	// maxLabelBytes bounds a label or column name kept in the file.
	maxLabelBytes = 64 << 10
)

// File is a scanned pickle. Open runs the pickle once, keeping the frame's
// structure (index, columns, one small record per array cell) and leaving
// the array bytes in the file; Row then reads one row's arrays with ReadAt.
// A File is not safe for concurrent use.
type File struct {
	r       io.ReaderAt
	closer  io.Closer
	proto   int
	nrows   int
	columns []string
	id      func(int) string
	// Per-row cells of the columns the reader uses; nil when absent.
	label, mask, hu, hulung []any
	// series holds the cells of the first of SeriesColumns present;
	// seriesCol names it.
	series         []any
	seriesCol      string
	buf            []byte    // scratch for one array's bytes
	huBuf, maskBuf []float64 // scratch floats for Item
}

// Open opens and scans the pickle at path.
func Open(path string) (*File, error) { return open(context.Background(), path) }

func open(ctx context.Context, path string) (*File, error) {
	fh, err := ingest.OpenFile(path) // never blocks on a named pipe
	if err != nil {
		return nil, err
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, err
	}
	f, err := newFile(ctx, fh, st.Size())
	if err != nil {
		fh.Close()
		return nil, err
	}
	f.closer = fh
	return f, nil
}

// NewFile scans the pickle of size bytes that r holds. r must stay
// readable while the File is used.
func NewFile(r io.ReaderAt, size int64) (*File, error) {
	return newFile(context.Background(), r, size)
}

// Close closes the file Open opened; it does nothing for NewFile.
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	return f.closer.Close()
}

// Len returns the number of rows.
func (f *File) Len() int { return f.nrows }

// Columns returns the frame's column names in order.
func (f *File) Columns() []string { return append([]string(nil), f.columns...) }

// Protocol returns the pickle protocol the file declares (0 when it has no
// PROTO opcode).
func (f *File) Protocol() int { return f.proto }

// ID returns the index label of row i as text: start+i*step for a
// RangeIndex (the row number for the default one), the label otherwise
// (floats as Python's repr writes them).
func (f *File) ID(i int) string { return f.id(i) }

func newFile(ctx context.Context, r io.ReaderAt, size int64) (*File, error) {
	t := newTranslator(ctx, r, size)
	u := gopickle.NewUnpickler(t)
	u.FindClass = findClass
	u.PersistentLoad = func(pid any) (any, error) {
		k, ok := pid.(int)
		if !ok || k < 0 || k >= len(t.spans) {
			return nil, fmt.Errorf("%w: bad payload reference %v", ErrCorrupt, pid)
		}
		return t.spans[k], nil
	}
	v, err := load(&u)
	if err != nil {
		if t.err != nil {
			return nil, t.err
		}
		if !errors.Is(err, ErrUnknownClass) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrLayout) &&
			!errors.Is(err, ErrCell) && !errors.Is(err, ErrTooLarge) {
			err = fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		return nil, &OpError{Offset: t.opStart, Op: t.op, Err: err}
	}
	f := &File{r: r, proto: t.proto}
	if err := f.interpret(v); err != nil {
		return nil, err
	}
	return f, nil
}

// load runs the unpickler. gopickle v0.2.0 indexes slices without checks
// on some malformed streams (DICT with an odd item count, for one); the
// translator refuses most such input, and a panic left is a corrupt file.
func load(u *gopickle.Unpickler) (v any, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%w: unpickler failed: %v", ErrCorrupt, r)
		}
	}()
	return u.Load()
}

// interpret checks the unpickled objects against the layout and keeps,
// per used column, the row cells.
func (f *File) interpret(v any) error {
	df, ok := v.(*dataFrame)
	if !ok {
		return fmt.Errorf("%w: the pickle holds a %s, not a DataFrame", ErrLayout, typeName(v))
	}
	mgr, ok := df.mgr.(*blockManager)
	if !ok {
		return fmt.Errorf("%w: DataFrame manager is a %s, not a BlockManager", ErrLayout, typeName(df.mgr))
	}
	if len(mgr.axes) != 2 {
		return fmt.Errorf("%w: BlockManager with %d axes", ErrLayout, len(mgr.axes))
	}
	ncols, colName, err := f.indexLabels(mgr.axes[0], "columns")
	if err != nil {
		return err
	}
	if ncols > maxColumns {
		return fmt.Errorf("%w: %d columns", ErrTooLarge, ncols)
	}
	nrows, rowID, err := f.indexLabels(mgr.axes[1], "index")
	if err != nil {
		return err
	}
	f.nrows, f.id = nrows, rowID
	f.columns = make([]string, ncols)
	for i := range f.columns {
		f.columns[i] = colName(i)
	}

	cells := make([][]any, ncols) // object columns
	numeric := make([]*ndarray, ncols)
	numericAt := make([]int, ncols)
	seen := make([]bool, ncols)
	for bi, blk := range mgr.blocks {
		arr, ok := blk.values.(*ndarray)
		if !ok {
			return fmt.Errorf("%w: block %d holds a %s (extension arrays are not supported)", ErrLayout, bi, typeName(blk.values))
		}
		if err := arr.usable(); err != nil {
			return fmt.Errorf("%w: block %d: %v", ErrLayout, bi, err)
		}
		locs, err := f.placement(blk.placement, ncols)
		if err != nil {
			return fmt.Errorf("block %d: %w", bi, err)
		}
		if len(arr.shape) != 2 || arr.shape[0] != len(locs) || arr.shape[1] != nrows {
			return fmt.Errorf("%w: block %d has shape %v for %d columns × %d rows", ErrLayout, bi, arr.shape, len(locs), nrows)
		}
		if arr.dtype.kind == 'O' && len(arr.objs) != len(locs)*nrows {
			return fmt.Errorf("%w: block %d has %d objects for shape %v", ErrLayout, bi, len(arr.objs), arr.shape)
		}
		for j, p := range locs {
			if seen[p] {
				return fmt.Errorf("%w: column %d is in two blocks", ErrLayout, p)
			}
			seen[p] = true
			if arr.dtype.kind == 'O' {
				// Object arrays pickle their elements in C order whatever
				// their memory order: row j of the block is column p.
				cells[p] = arr.objs[j*nrows : (j+1)*nrows : (j+1)*nrows]
			} else {
				numeric[p], numericAt[p] = arr, j
			}
		}
	}
	for p, ok := range seen {
		if !ok {
			return fmt.Errorf("%w: column %q is in no block", ErrLayout, f.columns[p])
		}
	}

	find := func(name string) (int, bool) {
		for i, c := range f.columns {
			if c == name {
				return i, true
			}
		}
		return 0, false
	}
	// A used column twice: which one is the truth (or the image) cannot
	// be told, so the file is refused.
	for _, name := range []string{ColLabel, ColMask, ColHU, ColHULung} {
		var at []string
		for i, c := range f.columns {
			if c == name {
				at = append(at, strconv.Itoa(i))
			}
		}
		if len(at) > 1 {
			return fmt.Errorf("%w: column %s appears %d times (positions %s); which one to use is ambiguous", ErrLayout, name, len(at), strings.Join(at, ", "))
		}
	}
	arrays := func(name string, required bool) ([]any, error) {
		p, ok := find(name)
		switch {
		case !ok && required:
			return nil, fmt.Errorf("%w: no %s column (columns: %s)", ErrLayout, name, strings.Join(f.columns, ", "))
		case !ok:
			return nil, nil
		case cells[p] == nil:
			return nil, fmt.Errorf("%w: column %s holds %s values, not arrays", ErrLayout, name, numeric[p].dtype.str)
		}
		return cells[p], nil
	}
	if f.hu, err = arrays(ColHU, true); err != nil {
		return err
	}
	if f.mask, err = arrays(ColMask, false); err != nil {
		return err
	}
	if f.hulung, err = arrays(ColHULung, false); err != nil {
		return err
	}
	for _, name := range SeriesColumns {
		p, ok := find(name)
		if !ok {
			continue
		}
		if cells[p] != nil {
			f.series = cells[p]
		} else if f.series, err = f.labels(numeric[p], numericAt[p], nrows); err != nil {
			return fmt.Errorf("%s column: %w", name, err)
		}
		f.seriesCol = name
		break
	}
	if p, ok := find(ColLabel); ok {
		if cells[p] != nil {
			f.label = cells[p]
		} else {
			// A numeric label column: read it whole, it is one value a row.
			labels, err := f.labels(numeric[p], numericAt[p], nrows)
			if err != nil {
				return fmt.Errorf("%s column: %w", ColLabel, err)
			}
			f.label = labels
		}
	}
	return nil
}

// usable reports why an array cannot be read, if it cannot.
func (a *ndarray) usable() error {
	switch {
	case !a.built:
		return fmt.Errorf("%w: array without state", ErrCell)
	case a.err != nil:
		return a.err
	case a.dtype.err != nil:
		return a.dtype.err
	}
	return nil
}

// indexLabels returns the length of an Index and a function giving its
// i-th label as text.
func (f *File) indexLabels(v any, what string) (int, func(int) string, error) {
	ix, ok := v.(*index)
	if !ok {
		return 0, nil, fmt.Errorf("%w: %s axis is a %s, not an Index", ErrLayout, what, typeName(v))
	}
	if ix.class == "RangeIndex" {
		get := func(k string, def int) (int, error) {
			x, ok := ix.dict.Get(k)
			if !ok || x == nil {
				return def, nil
			}
			n, ok := asInt(x)
			if !ok {
				return 0, fmt.Errorf("%w: RangeIndex %s is %T", ErrLayout, k, x)
			}
			return n, nil
		}
		start, err1 := get("start", 0)
		stop, err2 := get("stop", 0)
		step, err3 := get("step", 1)
		if err := errors.Join(err1, err2, err3); err != nil {
			return 0, nil, err
		}
		if step == 0 {
			return 0, nil, fmt.Errorf("%w: RangeIndex step 0", ErrLayout)
		}
		var n int64
		if step > 0 && stop > start {
			n = (int64(stop) - int64(start) + int64(step) - 1) / int64(step)
		} else if step < 0 && stop < start {
			n = (int64(start) - int64(stop) - int64(step) - 1) / -int64(step)
		}
		if n > maxIndexLen {
			return 0, nil, fmt.Errorf("%w: RangeIndex of %d rows", ErrTooLarge, n)
		}
		return int(n), func(i int) string { return strconv.FormatInt(int64(start)+int64(i)*int64(step), 10) }, nil
	}
	data, _ := ix.dict.Get("data")
	arr, ok := data.(*ndarray)
	if !ok {
		return 0, nil, fmt.Errorf("%w: %s %s data is a %s", ErrLayout, what, ix.class, typeName(data))
	}
	if err := arr.usable(); err != nil {
		return 0, nil, fmt.Errorf("%w: %s: %v", ErrLayout, what, err)
	}
	if len(arr.shape) != 1 {
		return 0, nil, fmt.Errorf("%w: %s of shape %v", ErrLayout, what, arr.shape)
	}
	n := arr.shape[0]
	if n > maxIndexLen {
		return 0, nil, fmt.Errorf("%w: %s of %d labels", ErrTooLarge, what, n)
	}
	var vals []any
	if arr.dtype.kind == 'O' {
		if len(arr.objs) != n {
			return 0, nil, fmt.Errorf("%w: %s has %d labels for shape %v", ErrLayout, what, len(arr.objs), arr.shape)
		}
		vals = arr.objs
	} else {
		var err error
		if vals, err = f.labels(arr, 0, n); err != nil {
			return 0, nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	labels := make([]string, n)
	for i, x := range vals {
		s, err := f.text(x)
		if err != nil {
			return 0, nil, fmt.Errorf("%s label %d: %w", what, i, err)
		}
		labels[i] = s
	}
	return n, func(i int) string { return labels[i] }, nil
}

// labels reads row j of a numeric array of shape (k, n) (or the whole of
// a 1-D one when j is 0) as n label texts.
func (f *File) labels(a *ndarray, j, n int) ([]any, error) {
	if a.dtype.kind == 'O' {
		return nil, fmt.Errorf("%w: object labels", ErrLayout)
	}
	total := 1
	for _, d := range a.shape {
		total *= d
	}
	if total > maxIndexLen {
		return nil, fmt.Errorf("%w: %d labels", ErrTooLarge, total)
	}
	raw, err := f.raw(a.data, total*a.dtype.size)
	if err != nil {
		return nil, err
	}
	sz := a.dtype.size
	out := make([]any, n)
	for i := range out {
		k := j*n + i // C order
		if a.fortran && len(a.shape) == 2 {
			k = i*a.shape[0] + j
		}
		out[i] = labelValue(a.dtype, raw[k*sz:(k+1)*sz])
	}
	return out, nil
}

// labelValue decodes one numeric element as the Go value the unpickler
// would give for the same Python scalar.
func labelValue(dt *dtype, b []byte) any {
	switch dt.kind {
	case 'b':
		return b[0] != 0
	case 'f':
		return floatAt(dt)(b)
	case 'u':
		if dt.size == 8 {
			return strconv.FormatUint(dt.order.Uint64(b), 10)
		}
	}
	return int(intAt(dt)(b))
}

// text renders a label (index label, column name, label1 cell) as text.
func (f *File) text(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case *span:
		if x.n > maxLabelBytes {
			return "", fmt.Errorf("%w: label of %d bytes", ErrTooLarge, x.n)
		}
		b := make([]byte, x.n)
		if _, err := f.r.ReadAt(b, x.off); err != nil {
			return "", err
		}
		if x.enc == encUTF8 && !utf8.Valid(b) {
			return "", fmt.Errorf("%w: label is not UTF-8", ErrCell)
		}
		return string(b), nil
	case nil:
		return "", nil
	case bool:
		if x {
			return "True", nil
		}
		return "False", nil
	case float64:
		return pyFloat(x), nil
	}
	if n, ok := asInt(v); ok {
		return strconv.Itoa(n), nil
	}
	return "", fmt.Errorf("%w: label is a %s", ErrCell, typeName(v))
}

// pyFloat formats like Python's repr(float).
func pyFloat(x float64) string {
	switch {
	case math.IsNaN(x):
		return "nan"
	case math.IsInf(x, 1):
		return "inf"
	case math.IsInf(x, -1):
		return "-inf"
	}
	e := strconv.FormatFloat(x, 'e', -1, 64)
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return e
	}
	s := strconv.FormatFloat(x, 'f', -1, 64)
	if !strings.ContainsRune(s, '.') {
		s += ".0"
	}
	return s
}

// placement returns the column positions of a block.
func (f *File) placement(v any, ncols int) ([]int, error) {
	var locs []int
	switch p := v.(type) {
	case *pySlice:
		start, stop, step := 0, ncols, 1
		for _, s := range []struct {
			v   any
			dst *int
		}{{p.start, &start}, {p.stop, &stop}, {p.step, &step}} {
			if s.v == nil {
				continue
			}
			n, ok := asInt(s.v)
			if !ok {
				return nil, fmt.Errorf("%w: block placement slice of %T", ErrLayout, s.v)
			}
			*s.dst = n
		}
		if step <= 0 || start < 0 || stop > ncols {
			return nil, fmt.Errorf("%w: block placement slice(%d, %d, %d) for %d columns", ErrLayout, start, stop, step, ncols)
		}
		for i := start; i < stop; i += step {
			locs = append(locs, i)
		}
	case *ndarray:
		if err := p.usable(); err != nil {
			return nil, fmt.Errorf("%w: block placement: %v", ErrLayout, err)
		}
		if len(p.shape) != 1 || (p.dtype.kind != 'i' && p.dtype.kind != 'u') || p.shape[0] > ncols {
			return nil, fmt.Errorf("%w: block placement array %s%v", ErrLayout, p.dtype.str, p.shape)
		}
		raw, err := f.raw(p.data, p.shape[0]*p.dtype.size)
		if err != nil {
			return nil, err
		}
		get := intAt(p.dtype)
		for k := range p.shape[0] {
			locs = append(locs, int(get(raw[k*p.dtype.size:])))
		}
	default:
		items, ok := seq(v)
		if !ok {
			if n, isInt := asInt(v); isInt {
				items = []any{n}
			} else {
				return nil, fmt.Errorf("%w: block placement is a %s", ErrLayout, typeName(v))
			}
		}
		for _, x := range items {
			n, ok := asInt(x)
			if !ok {
				return nil, fmt.Errorf("%w: block placement of %T", ErrLayout, x)
			}
			locs = append(locs, n)
		}
	}
	for _, p := range locs {
		if p < 0 || p >= ncols {
			return nil, fmt.Errorf("%w: block placement %d for %d columns", ErrLayout, p, ncols)
		}
	}
	return locs, nil
}

// raw returns the want bytes of an array's data, reading them from the
// file into f.buf. The declared length is checked before anything is read.
func (f *File) raw(data any, want int) ([]byte, error) {
	switch d := data.(type) {
	case []byte:
		if len(d) != want {
			return nil, fmt.Errorf("%w: %d data bytes, the shape needs %d", ErrCell, len(d), want)
		}
		return d, nil
	case string: // a short str, kept in the frame's structure
		b := []byte(d)
		n, err := decodeLatin1(b)
		if err != nil {
			return nil, err
		}
		if n != want {
			return nil, fmt.Errorf("%w: array data is a str of %d characters, the shape needs %d bytes", ErrCell, n, want)
		}
		return b[:n], nil
	case *span:
		// A str (protocol 2's _codecs.encode, or a plain str at any
		// protocol) gives numpy its code points as bytes (latin1): one or
		// two UTF-8 bytes a data byte.
		text := d.enc != encRaw
		if !text && d.n != int64(want) {
			return nil, fmt.Errorf("%w: %d data bytes, the shape needs %d", ErrCell, d.n, want)
		}
		if text && (d.n < int64(want) || d.n > 2*int64(want)) {
			return nil, fmt.Errorf("%w: array data is a str of %d UTF-8 bytes, which cannot be the %d bytes the shape needs", ErrCell, d.n, want)
		}
		if cap(f.buf) < int(d.n) {
			f.buf = make([]byte, d.n)
		}
		b := f.buf[:d.n]
		if _, err := f.r.ReadAt(b, d.off); err != nil {
			return nil, fmt.Errorf("reading %d bytes at offset %d: %w", d.n, d.off, err)
		}
		if text {
			n, err := decodeLatin1(b)
			if err != nil {
				return nil, err
			}
			if n != want {
				return nil, fmt.Errorf("%w: array data is a str of %d characters, the shape needs %d bytes", ErrCell, n, want)
			}
			b = b[:n]
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: array data is a %s", ErrCell, typeName(data))
}

// decodeLatin1 turns UTF-8 text whose code points are all below 256 into
// those bytes, in place, and returns their count.
func decodeLatin1(b []byte) (int, error) {
	n := 0
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case c < 0x80:
			i++
		case c&0xe0 == 0xc0 && i+1 < len(b) && b[i+1]&0xc0 == 0x80 && c <= 0xc3 && c >= 0xc2:
			c = (c&0x1f)<<6 | b[i+1]&0x3f
			i += 2
		default:
			return 0, fmt.Errorf("%w: array data is a str with a character above U+00FF (numpy takes a str's characters as bytes)", ErrCell)
		}
		b[n] = c
		n++
	}
	return n, nil
}

// floatAt returns a decoder of one element of a numeric dtype as float64.
func floatAt(dt *dtype) func([]byte) float64 {
	switch dt.kind {
	case 'f':
		if dt.size == 4 {
			return func(b []byte) float64 { return float64(math.Float32frombits(dt.order.Uint32(b))) }
		}
		return func(b []byte) float64 { return math.Float64frombits(dt.order.Uint64(b)) }
	case 'u':
		switch dt.size {
		case 1:
			return func(b []byte) float64 { return float64(b[0]) }
		case 2:
			return func(b []byte) float64 { return float64(dt.order.Uint16(b)) }
		case 4:
			return func(b []byte) float64 { return float64(dt.order.Uint32(b)) }
		default:
			return func(b []byte) float64 { return float64(dt.order.Uint64(b)) }
		}
	case 'b':
		return func(b []byte) float64 {
			if b[0] != 0 {
				return 1
			}
			return 0
		}
	}
	get := intAt(dt)
	return func(b []byte) float64 { return float64(get(b)) }
}

// intAt returns a decoder of one element of an integer or bool dtype.
func intAt(dt *dtype) func([]byte) int64 {
	signed := dt.kind == 'i'
	switch dt.size {
	case 1:
		if signed {
			return func(b []byte) int64 { return int64(int8(b[0])) }
		}
		return func(b []byte) int64 { return int64(b[0]) }
	case 2:
		if signed {
			return func(b []byte) int64 { return int64(int16(dt.order.Uint16(b))) }
		}
		return func(b []byte) int64 { return int64(dt.order.Uint16(b)) }
	case 4:
		if signed {
			return func(b []byte) int64 { return int64(int32(dt.order.Uint32(b))) }
		}
		return func(b []byte) int64 { return int64(dt.order.Uint32(b)) }
	default:
		return func(b []byte) int64 { return int64(dt.order.Uint64(b)) }
	}
}

// Row is one slice of a Mendeley DataFrame: what File.Row returns and what
// Write writes.
type Row struct {
	// ID is the row's index label (File.Row); Write ignores it and writes
	// a RangeIndex.
	ID string
	// Label is the label1 value (LR2, LR3, LR4A, LR4B).
	Label string
	// Series is the row's series (or patient) for Write: when the first
	// row has one, every row is written with a series_uid column.
	Series string
	// Rows and Cols are the slice size.
	Rows, Cols int
	// Mask is the mask column; nil when the frame has no mask column.
	// Row refuses a mask with a value other than 0 and 1 (bool, any
	// integer dtype, or floats exactly 0.0 and 1.0). Write needs it.
	Mask *imgx.Mask
	// HU is hu_array_old in row-major order, as floats exactly as stored
	// (NaN included).
	HU []float64
	// HULung is hu_array (HU times the lung mask) in row-major order; nil
	// when the frame has no such column. Write writes HU when it is nil.
	HULung []float64
}

// Row reads row i: its label and arrays, converted to float64 row-major
// (Fortran-ordered cells are transposed). It fails when a cell is not a
// numeric 2-D array within imgx.MaxSide, when the data does not match the
// declared shape, when mask and hu_array_old differ in shape, or when a
// mask value is not 0 or 1; NaN HU is returned as is (Read rejects it).
func (f *File) Row(i int) (*Row, error) {
	r, err := f.row(i, true, false)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// row reads row i, with hu_array when lung is set; with reuse, r.HU is
// scratch valid until the next call. On error the returned Row holds what
// was decoded (the ID and, when readable, the label).
func (f *File) row(i int, lung, reuse bool) (*Row, error) {
	if i < 0 || i >= f.nrows {
		return nil, fmt.Errorf("pickle: row %d of %d", i, f.nrows)
	}
	r := &Row{ID: f.id(i)}
	if f.label != nil {
		s, err := f.text(f.label[i])
		if err != nil {
			return r, fmt.Errorf("%s: %w", ColLabel, err)
		}
		if _, missing := labelWarning(f.label[i]); !missing { // None, NaN: no label
			r.Label = s
		}
	}
	var err error
	defer func() {
		if reuse && r.HU != nil {
			f.huBuf = r.HU
		}
	}()
	var huDst []float64
	if reuse {
		huDst = f.huBuf
	}
	if r.Rows, r.Cols, r.HU, err = f.floats(f.hu[i], huDst); err != nil {
		return r, fmt.Errorf("%s: %w", ColHU, err)
	}
	if f.mask != nil {
		rows, cols, v, err := f.floats(f.mask[i], f.maskBuf)
		if v != nil {
			f.maskBuf = v
		}
		if err != nil {
			return r, fmt.Errorf("%s: %w", ColMask, err)
		}
		if rows != r.Rows || cols != r.Cols {
			return r, fmt.Errorf("%w: %s is %d×%d but %s is %d×%d", ErrCell, ColMask, rows, cols, ColHU, r.Rows, r.Cols)
		}
		r.Mask = imgx.NewMask(rows, cols)
		bad, first := 0, -1
		for k, x := range v {
			switch x {
			case 0:
			case 1:
				r.Mask.Pix[k] = 1
			default: // 0.5, 2, -1, NaN: not a mask value
				if bad++; first < 0 {
					first = k
				}
			}
		}
		if bad > 0 {
			return r, fmt.Errorf("%w: %s value %v at pixel %d (row %d, col %d) is not 0 or 1 (%d of %d pixels are neither)",
				ErrCell, ColMask, v[first], first, first/cols, first%cols, bad, len(v))
		}
	}
	if lung && f.hulung != nil {
		rows, cols, v, err := f.floats(f.hulung[i], nil)
		if err != nil {
			return r, fmt.Errorf("%s: %w", ColHULung, err)
		}
		if rows != r.Rows || cols != r.Cols {
			return r, fmt.Errorf("%w: %s is %d×%d but %s is %d×%d", ErrCell, ColHULung, rows, cols, ColHU, r.Rows, r.Cols)
		}
		r.HULung = v
	}
	return r, nil
}

// floats decodes an array cell into row-major float64s (into dst when it
// is large enough).
func (f *File) floats(cell any, dst []float64) (rows, cols int, v []float64, err error) {
	a, ok := cell.(*ndarray)
	if !ok {
		return 0, 0, nil, fmt.Errorf("%w: cell is a %s, not an array", ErrCell, typeName(cell))
	}
	if err := a.usable(); err != nil {
		return 0, 0, nil, err
	}
	if a.dtype.kind == 'O' {
		return 0, 0, nil, fmt.Errorf("%w: cell is an object array", ErrCell)
	}
	if len(a.shape) != 2 {
		return 0, 0, nil, fmt.Errorf("%w: shape %v is not 2-D", ErrCell, a.shape)
	}
	rows, cols = a.shape[0], a.shape[1]
	if err := imgx.CheckSize(rows, cols); err != nil {
		return 0, 0, nil, fmt.Errorf("%w: %v", ErrCell, err)
	}
	sz := a.dtype.size
	raw, err := f.raw(a.data, rows*cols*sz)
	if err != nil {
		return 0, 0, nil, err
	}
	n := rows * cols
	if cap(dst) >= n {
		v = dst[:n]
	} else {
		v = make([]float64, n)
	}
	if !a.fortran && a.dtype.kind == 'f' && a.dtype.order == binary.LittleEndian {
		// The dataset's own layout (float64 or float32, little endian,
		// C order): one tight loop, no call per element.
		raw = raw[:n*sz]
		if sz == 8 {
			for k := range v {
				v[k] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*k:]))
			}
		} else {
			for k := range v {
				v[k] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*k:])))
			}
		}
		return rows, cols, v, nil
	}
	get := floatAt(a.dtype)
	if !a.fortran {
		for k := range v {
			v[k] = get(raw[k*sz:])
		}
		return rows, cols, v, nil
	}
	k := 0
	for c := range cols {
		for r := range rows {
			v[r*cols+c] = get(raw[k*sz:])
			k++
		}
	}
	return rows, cols, v, nil
}

func typeName(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case string:
		return "str"
	case int, *types.Tuple, *types.List, *types.Dict, bool, float64:
		return strings.TrimPrefix(fmt.Sprintf("%T", v), "*types.")
	case *ndarray:
		if x.dtype != nil {
			return "numpy array of " + x.dtype.str
		}
		return "numpy array"
	case *index:
		return "pandas " + x.class
	case *dataFrame:
		return "pandas DataFrame"
	case *blockManager:
		return "pandas BlockManager"
	case *span:
		if x.enc == encRaw {
			return "bytes"
		}
		return "str"
	}
	return fmt.Sprintf("%T", v)
}
