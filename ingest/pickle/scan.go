package pickle

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Limits of the first pass. They bound what a hostile file can make the
// reader hold in memory; the real dataset (708 rows, 4 object columns) uses
// about 25 opcodes and one payload per array cell.
const (
	// maxInline is the longest str payload handed to the unpickler as a
	// value; longer ones (and every bytes payload) stay in the file and
	// are represented by a span.
	maxInline = 255
	// maxLine bounds the text argument of protocol 0 opcodes (GLOBAL's
	// module and name, INT, FLOAT, ...).
	maxLine = 4096
	// maxCost bounds what the unpickler may allocate, as charged by
	// opCost. The real dataset costs about 4 KiB per array cell, so this
	// allows some 60 000 cells (15 000 rows) while a hostile stream of
	// one-byte opcodes stops at a bounded heap.
	maxCost = 256 << 20
	// maxSpans bounds the number of out-of-line payloads.
	maxSpans = 1 << 22
	// maxLongBytes bounds LONG1/LONG4 integers (the layout has none wider
	// than 8 bytes).
	maxLongBytes = 64
	// maxDeclared is the largest payload or frame length taken for a
	// truncated file rather than a bogus length (both stop the scan).
	maxDeclared = 1 << 40
	// scanBuf is the read window of the first pass, scanBufAfterSkip the
	// window read after a skipped payload.
	scanBuf          = 64 << 10
	scanBufAfterSkip = 4 << 10
)

// Pickle opcodes (CPython Lib/pickle.py) the first pass treats specially.
const (
	opStop           = '.'
	opBinInt         = 'J'
	opBinInt1        = 'K'
	opBinPersID      = 'Q'
	opPersID         = 'P'
	opBinBytes       = 'B'
	opShortBinBytes  = 'C'
	opBinString      = 'T'
	opShortBinString = 'U'
	opBinUnicode     = 'X'
	opProto          = 0x80
	opExt1           = 0x82
	opExt2           = 0x83
	opExt4           = 0x84
	opLong1          = 0x8a
	opLong4          = 0x8b
	opShortBinUni    = 0x8c
	opBinUnicode8    = 0x8d
	opBinBytes8      = 0x8e
	opFrame          = 0x95
	opByteArray8     = 0x96
	opNextBuffer     = 0x97
	opReadOnlyBuffer = 0x98
)

// argSize gives, for opcodes passed to the unpickler unchanged, the size of
// their fixed argument; -1 marks opcodes handled (or refused) by step, and
// -2 the ones taking newline-terminated text arguments (the count is in
// lineArgs).
var argSize [256]int8

var lineArgs = map[byte]int{'F': 1, 'I': 1, 'L': 1, 'g': 1, 'p': 1, 'c': 2, 'i': 2}

func init() {
	for i := range argSize {
		argSize[i] = -1
	}
	for _, op := range []byte("(.012NRab}delo]s)tu\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94\x98") {
		argSize[op] = 0
	}
	for op, n := range map[byte]int8{'K': 1, 'M': 2, 'J': 4, 'G': 8, 'h': 1, 'j': 4, 'q': 1, 'r': 4} {
		argSize[op] = n
	}
	for op := range lineArgs {
		argSize[op] = -2
	}
}

// encoding says how the bytes of a span become a value.
type encoding uint8

const (
	encRaw    encoding = iota // bytes, bytearray, py2 str: the bytes themselves
	encUTF8                   // a str: UTF-8 text
	encLatin1                 // a str passed through _codecs.encode(s, 'latin1'): each code point is one byte
)

// span is a payload left in the file: n bytes at offset off.
type span struct {
	off, n int64
	enc    encoding
}

// seqReader reads a file front to back through a window, and skips
// payloads without reading them.
type seqReader struct {
	r      io.ReaderAt
	size   int64
	off    int64 // next byte
	buf    []byte
	bufOff int64 // buf holds file[bufOff:bufOff+len(buf)]
}

// next returns the next n bytes (n <= scanBuf), valid until the next call.
func (s *seqReader) next(n int) ([]byte, error) {
	if int64(n) > s.size-s.off {
		return nil, ErrTruncated
	}
	if s.off < s.bufOff || s.off+int64(n) > s.bufOff+int64(len(s.buf)) {
		want := int64(scanBuf)
		if s.off > s.bufOff+int64(len(s.buf)) {
			// Just past a skipped payload: the next one is likely a few
			// hundred bytes of opcodes away.
			want = max(scanBufAfterSkip, int64(n))
		}
		if rem := s.size - s.off; rem < want {
			want = rem
		}
		if cap(s.buf) < scanBuf {
			s.buf = make([]byte, scanBuf)
		}
		s.buf = s.buf[:want]
		m, err := s.r.ReadAt(s.buf, s.off)
		if m < len(s.buf) {
			s.buf = s.buf[:m]
			if err == nil || errors.Is(err, io.EOF) {
				err = ErrTruncated
			}
		}
		s.bufOff = s.off
		if m < n {
			return nil, err
		}
	}
	i := int(s.off - s.bufOff)
	s.off += int64(n)
	return s.buf[i : i+n], nil
}

// skip moves past n bytes without reading them.
func (s *seqReader) skip(n int64) error {
	if n < 0 || n > s.size-s.off {
		return ErrTruncated
	}
	s.off += n
	return nil
}

// line returns the next newline-terminated line, newline included.
func (s *seqReader) line(dst []byte) ([]byte, error) {
	for len(dst) < maxLine {
		b, err := s.next(1)
		if err != nil {
			return nil, err
		}
		dst = append(dst, b[0])
		if b[0] == '\n' {
			return dst, nil
		}
	}
	return nil, fmt.Errorf("%w: text argument longer than %d bytes", ErrTooLarge, maxLine)
}

// translator is the first pass. It walks the pickle opcode by opcode and
// feeds the unpickler an equivalent stream in which every bytes-like
// payload, and every str payload longer than maxInline, is replaced by
// "BININT k; BINPERSID": the unpickler then asks PersistentLoad for
// object k, which is the span (offset, length) of that payload in the file.
// The payloads themselves are skipped, not read. FRAME opcodes are dropped
// (frames only group opcodes; the stream is valid without them). The
// translator also enforces the limits above and refuses the opcodes the
// layout never uses, so every length is checked before the unpickler sees
// it and allocates.
type translator struct {
	in      seqReader
	ctx     context.Context
	out     []byte
	pos     int
	spans   []*span
	ops     int
	cost    int64
	proto   int
	stopped bool
	err     error
	opStart int64
	op      byte
}

func newTranslator(ctx context.Context, r io.ReaderAt, size int64) *translator {
	return &translator{in: seqReader{r: r, size: size}, ctx: ctx, out: make([]byte, 0, 512)}
}

// Read implements io.Reader for the unpickler.
func (t *translator) Read(p []byte) (int, error) {
	if err := t.fill(); err != nil {
		return 0, err
	}
	n := copy(p, t.out[t.pos:])
	t.pos += n
	return n, nil
}

// ReadByte implements io.ByteReader for the unpickler.
func (t *translator) ReadByte() (byte, error) {
	if err := t.fill(); err != nil {
		return 0, err
	}
	b := t.out[t.pos]
	t.pos++
	return b, nil
}

func (t *translator) fill() error {
	for t.pos >= len(t.out) {
		if t.err != nil {
			return t.err
		}
		if t.stopped {
			return io.EOF
		}
		t.out, t.pos = t.out[:0], 0
		if err := t.step(); err != nil {
			t.out = t.out[:0]
			t.err = &OpError{Offset: t.opStart, Op: t.op, Err: err}
		}
	}
	return nil
}

// payloadLen checks a declared payload length against the file.
func (t *translator) payloadLen(n uint64) (int64, error) {
	left := t.in.size - t.in.off
	switch {
	case n > maxDeclared:
		return 0, fmt.Errorf("%w: payload of %d bytes", ErrTooLarge, n)
	case n > uint64(left):
		return 0, fmt.Errorf("%w: payload of %d bytes, %d left in the file", ErrTruncated, n, left)
	}
	return int64(n), nil
}

func (t *translator) lenArg(size int) (uint64, error) {
	b, err := t.in.next(size)
	if err != nil {
		return 0, err
	}
	switch size {
	case 1:
		return uint64(b[0]), nil
	case 4:
		return uint64(binary.LittleEndian.Uint32(b)), nil
	default:
		return binary.LittleEndian.Uint64(b), nil
	}
}

// emitSpan records the payload of n bytes at the current offset, skips it
// and emits the persistent-id reference to it.
func (t *translator) emitSpan(n int64, enc encoding) error {
	if len(t.spans) >= maxSpans {
		return fmt.Errorf("%w: more than %d payloads", ErrTooLarge, maxSpans)
	}
	k := len(t.spans)
	t.spans = append(t.spans, &span{off: t.in.off, n: n, enc: enc})
	t.cost += 128 // the span, its slot, and the BININT the unpickler boxes
	if err := t.in.skip(n); err != nil {
		return err
	}
	t.out = append(t.out, opBinInt)
	t.out = binary.LittleEndian.AppendUint32(t.out, uint32(k))
	t.out = append(t.out, opBinPersID)
	return nil
}

// step translates one opcode into t.out.
func (t *translator) step() error {
	t.opStart = t.in.off
	t.op = 0
	b, err := t.in.next(1)
	if err != nil {
		if errors.Is(err, ErrTruncated) {
			return fmt.Errorf("%w: no STOP opcode before the end of the file", ErrTruncated)
		}
		return err
	}
	op := b[0]
	t.op = op
	t.ops++
	if t.cost += opCost(op); t.cost > maxCost {
		return fmt.Errorf("%w: the pickle builds more than %d MiB of objects", ErrTooLarge, maxCost>>20)
	}
	if t.ops&4095 == 0 && t.ctx != nil {
		if err := t.ctx.Err(); err != nil {
			return err
		}
	}
	switch n := argSize[op]; {
	case n >= 0:
		arg, err := t.in.next(int(n))
		if err != nil {
			return err
		}
		t.out = append(t.out, op)
		t.out = append(t.out, arg...)
		if op == opStop {
			t.stopped = true
		}
		return nil
	case n == -2:
		t.out = append(t.out, op)
		for range lineArgs[op] {
			if t.out, err = t.in.line(t.out); err != nil {
				return err
			}
		}
		return nil
	}

	switch op {
	case opProto:
		v, err := t.in.next(1)
		if err != nil {
			return err
		}
		if v[0] > 5 {
			return fmt.Errorf("%w: unsupported protocol %d", ErrCorrupt, v[0])
		}
		t.proto = int(v[0])
		t.out = append(t.out, op, v[0])
	case opFrame:
		n, err := t.lenArg(8)
		if err != nil {
			return err
		}
		_, err = t.payloadLen(n)
		return err
	case opShortBinBytes, opBinBytes, opBinBytes8, opByteArray8:
		d, err := t.lenArg(lenSize(op))
		if err != nil {
			return err
		}
		n, err := t.payloadLen(d)
		if err != nil {
			return err
		}
		return t.emitSpan(n, encRaw)
	case opShortBinUni, opBinUnicode, opBinUnicode8, opShortBinString, opBinString:
		d, err := t.lenArg(lenSize(op))
		if err != nil {
			return err
		}
		if op == opBinString && d >= 1<<31 {
			return fmt.Errorf("%w: negative BINSTRING length", ErrCorrupt)
		}
		n, err := t.payloadLen(d)
		if err != nil {
			return err
		}
		text := op != opShortBinString && op != opBinString
		t.cost += n
		if n > maxInline {
			enc := encRaw
			if text {
				enc = encUTF8
			}
			return t.emitSpan(n, enc)
		}
		v, err := t.in.next(int(n))
		if err != nil {
			return err
		}
		if text {
			t.out = append(t.out, opShortBinUni, byte(n))
		} else {
			t.out = append(t.out, opShortBinString, byte(n))
		}
		t.out = append(t.out, v...)
	case opLong1, opLong4:
		var n uint64
		if op == opLong1 {
			n, err = t.lenArg(1)
		} else {
			n, err = t.lenArg(4)
		}
		if err != nil {
			return err
		}
		if n > maxLongBytes {
			return fmt.Errorf("%w: integer of %d bytes", ErrTooLarge, n)
		}
		if n == 0 {
			// LONG of zero bytes is 0; the unpickler would index it.
			t.out = append(t.out, opBinInt1, 0)
			return nil
		}
		v, err := t.in.next(int(n))
		if err != nil {
			return err
		}
		t.out = append(t.out, opLong1, byte(n))
		t.out = append(t.out, v...)
	case 'S', 'V':
		// gopickle keeps their escapes undecoded; pandas never writes
		// protocol 0.
		return fmt.Errorf("%w: protocol 0 text (STRING, UNICODE) is not supported", ErrCorrupt)
	case opPersID, opBinPersID:
		return fmt.Errorf("%w: persistent ids are not used by pandas", ErrCorrupt)
	case opExt1, opExt2, opExt4:
		return fmt.Errorf("%w: extension registry codes are not supported", ErrCorrupt)
	case opNextBuffer:
		return fmt.Errorf("%w: out-of-band buffers are not supported", ErrCorrupt)
	default:
		return fmt.Errorf("%w: unknown opcode", ErrCorrupt)
	}
	return nil
}

// lenSize is the size of the length argument of a counted opcode.
func lenSize(op byte) int {
	switch op {
	case opShortBinBytes, opShortBinUni, opShortBinString:
		return 1
	case opBinBytes, opBinUnicode, opBinString:
		return 4
	default: // BINBYTES8, BINUNICODE8, BYTEARRAY8
		return 8
	}
}

// opCost bounds what gopickle v0.2.0 allocates for one opcode, growth of
// its stack and memo included (inline string payloads are charged by
// length on top): a MARK starts a stack with room for 16 values, empty
// containers reserve a few entries, and any value may take a boxed
// interface, a stack slot and a memo entry. TestOpCostBoundsAllocation
// checks the figures.
func opCost(op byte) int64 {
	switch op {
	case '(': // MARK
		return 448
	case '}', 'd', 0x8f, 0x91: // dicts and sets
		return 320
	case ']', 'l': // lists
		return 256
	}
	return 128
}
