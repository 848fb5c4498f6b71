package dimse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// PDU types (PS3.8 §9.3).
const (
	pduAssociateRQ = 0x01
	pduAssociateAC = 0x02
	pduAssociateRJ = 0x03
	pduPData       = 0x04
	pduReleaseRQ   = 0x05
	pduReleaseRP   = 0x06
	pduAbort       = 0x07
)

// Item types of association PDUs.
const (
	itemAppContext    = 0x10
	itemPresContextRQ = 0x20
	itemPresContextAC = 0x21
	itemAbstract      = 0x30
	itemTransfer      = 0x40
	itemUserInfo      = 0x50
	itemMaxLength     = 0x51
	itemImplClass     = 0x52
	itemImplVersion   = 0x55
)

// appContext is the DICOM application context name.
const appContext = "1.2.840.10008.3.1.1.1"

// maxAssociatePDU bounds an A-ASSOCIATE-RQ (a few hundred bytes per
// presentation context; 128 contexts of long UIDs fit).
const maxAssociatePDU = 64 << 10

// ErrProtocol reports a PDU that breaks the upper layer protocol: an
// unknown type, a declared length beyond the limits or inconsistent with
// its items, a PDU out of sequence. The association is aborted.
var ErrProtocol = errors.New("dimse: protocol error")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}

// readPDU reads one PDU, refusing lengths over the cap of its type before
// allocating.
func readPDU(r io.Reader, maxPData uint32) (typ byte, body []byte, err error) {
	return readPDUFunc(r, maxPData, nil)
}

// readPDUFunc is readPDU calling onLength, when set, with the body's
// length once the header is read and checked (to set a read deadline).
func readPDUFunc(r io.Reader, maxPData uint32, onLength func(n uint32)) (typ byte, body []byte, err error) {
	var h [6]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	typ = h[0]
	n := binary.BigEndian.Uint32(h[2:])
	var limit uint32
	switch typ {
	case pduAssociateRQ, pduAssociateAC:
		limit = maxAssociatePDU
	case pduPData:
		// The negotiated maximum is of the variable field; allow the PDV
		// item headers some peers count outside it.
		limit = maxPData + 64
	case pduReleaseRQ, pduReleaseRP, pduAbort, pduAssociateRJ:
		limit = 4
	default:
		return typ, nil, protoErr("unknown PDU type 0x%02x", typ)
	}
	if n > limit {
		return typ, nil, protoErr("PDU type 0x%02x declares %d bytes, over the %d-byte limit", typ, n, limit)
	}
	if onLength != nil {
		onLength(n)
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return typ, nil, fmt.Errorf("dimse: reading a %d-byte PDU of type 0x%02x: %w", n, typ, err)
	}
	return typ, body, nil
}

func writePDU(w io.Writer, typ byte, body []byte) error {
	h := [6]byte{typ}
	binary.BigEndian.PutUint32(h[2:], uint32(len(body)))
	if _, err := w.Write(append(h[:], body...)); err != nil {
		return fmt.Errorf("dimse: writing PDU 0x%02x: %w", typ, err)
	}
	return nil
}

// presContext is one proposed presentation context.
type presContext struct {
	id       byte
	abstract string
	syntaxes []string
}

// assocRQ is a parsed A-ASSOCIATE-RQ.
type assocRQ struct {
	calledAE, callingAE string
	appContext          string
	contexts            []presContext
	maxLength           uint32 // the requestor's maximum P-DATA length (0: unlimited)
	implClass           string
	raw36               []byte // called and calling AE fields as sent, echoed in the AC
}

type itemReader struct {
	b   []byte
	pos int
}

// next returns the next item (type, value), with 2-byte length.
func (r *itemReader) next() (byte, []byte, error) {
	if r.pos+4 > len(r.b) {
		return 0, nil, protoErr("item header at byte %d runs past the PDU", r.pos)
	}
	typ := r.b[r.pos]
	n := int(binary.BigEndian.Uint16(r.b[r.pos+2:]))
	if r.pos+4+n > len(r.b) {
		return 0, nil, protoErr("item 0x%02x at byte %d declares %d bytes, past the end of its PDU", typ, r.pos, n)
	}
	v := r.b[r.pos+4 : r.pos+4+n]
	r.pos += 4 + n
	return typ, v, nil
}

func (r *itemReader) done() bool { return r.pos >= len(r.b) }

func uidString(b []byte) string { return strings.TrimRight(string(b), "\x00 ") }

func parseAssociateRQ(b []byte) (*assocRQ, error) {
	if len(b) < 68 {
		return nil, protoErr("A-ASSOCIATE-RQ of %d bytes is shorter than its 68-byte header", len(b))
	}
	if binary.BigEndian.Uint16(b)&1 == 0 {
		return nil, protoErr("protocol version 0x%04x is not supported", binary.BigEndian.Uint16(b))
	}
	rq := &assocRQ{
		calledAE:  strings.TrimSpace(string(b[4:20])),
		callingAE: strings.TrimSpace(string(b[20:36])),
		raw36:     append([]byte{}, b[4:36]...),
	}
	r := &itemReader{b: b[68:]}
	for !r.done() {
		typ, v, err := r.next()
		if err != nil {
			return nil, err
		}
		switch typ {
		case itemAppContext:
			rq.appContext = uidString(v)
		case itemPresContextRQ:
			if len(v) < 4 {
				return nil, protoErr("presentation context item of %d bytes", len(v))
			}
			pc := presContext{id: v[0]}
			sr := &itemReader{b: v[4:]}
			for !sr.done() {
				st, sv, err := sr.next()
				if err != nil {
					return nil, err
				}
				switch st {
				case itemAbstract:
					pc.abstract = uidString(sv)
				case itemTransfer:
					pc.syntaxes = append(pc.syntaxes, uidString(sv))
				}
			}
			rq.contexts = append(rq.contexts, pc)
		case itemUserInfo:
			sr := &itemReader{b: v}
			for !sr.done() {
				st, sv, err := sr.next()
				if err != nil {
					return nil, err
				}
				switch st {
				case itemMaxLength:
					if len(sv) != 4 {
						return nil, protoErr("maximum length item of %d bytes", len(sv))
					}
					rq.maxLength = binary.BigEndian.Uint32(sv)
				case itemImplClass:
					rq.implClass = uidString(sv)
				}
			}
		}
	}
	return rq, nil
}

// contextResult is the answer to one presentation context.
type contextResult struct {
	id     byte
	result byte // 0 acceptance, 3 abstract syntax not supported, 4 transfer syntaxes not supported
	syntax string
}

func appendItem(b []byte, typ byte, v []byte) []byte {
	b = append(b, typ, 0, byte(len(v)>>8), byte(len(v)))
	return append(b, v...)
}

func evenUID(s string) []byte {
	b := []byte(s)
	if len(b)%2 == 1 {
		b = append(b, 0)
	}
	return b
}

func encodeAssociateAC(rq *assocRQ, results []contextResult, maxLength uint32, implClass, implVersion string) []byte {
	b := []byte{0, 1, 0, 0}
	b = append(b, rq.raw36...)
	b = append(b, make([]byte, 32)...)
	b = appendItem(b, itemAppContext, []byte(appContext))
	for _, r := range results {
		var sub []byte
		syntax := r.syntax
		if r.result != 0 {
			syntax = "1.2.840.10008.1.2" // ignored by the requestor on rejection
		}
		sub = appendItem(sub, itemTransfer, []byte(syntax))
		b = appendItem(b, itemPresContextAC, append([]byte{r.id, 0, r.result, 0}, sub...))
	}
	var ui []byte
	ml := make([]byte, 4)
	binary.BigEndian.PutUint32(ml, maxLength)
	ui = appendItem(ui, itemMaxLength, ml)
	ui = appendItem(ui, itemImplClass, []byte(implClass))
	ui = appendItem(ui, itemImplVersion, []byte(implVersion))
	return appendItem(b, itemUserInfo, ui)
}

// A-ASSOCIATE-RJ reasons (result 1 permanent, source 1 service user; or
// source 3 provider presentation for congestion).
const (
	rjSourceUser            = 1
	rjSourceACSE            = 2
	rjSourcePresentation    = 3
	rjNoReason              = 1
	rjAppContextUnsupported = 2
	rjCallingAE             = 3
	rjCalledAE              = 7
	rjProtocolVersion       = 2 // with source 2
	rjCongestion            = 1 // with source 3
	rjLocalLimit            = 2 // with source 3
)

func encodeReject(result, source, reason byte) []byte { return []byte{0, result, source, reason} }

// A-ABORT: source 0 service user, 2 service provider; reasons (provider)
// 0 not specified, 1 unrecognized PDU, 2 unexpected PDU, 6 invalid
// parameter value.
func encodeAbort(source, reason byte) []byte { return []byte{0, 0, source, reason} }

// pdv is one presentation data value of a P-DATA-TF.
type pdv struct {
	context byte
	command bool
	last    bool
	data    []byte
}

func parsePData(b []byte) ([]pdv, error) {
	var out []pdv
	for pos := 0; pos < len(b); {
		if pos+6 > len(b) {
			return nil, protoErr("PDV header at byte %d runs past the PDU", pos)
		}
		n := int(binary.BigEndian.Uint32(b[pos:]))
		if n < 2 || n > len(b)-pos-4 {
			return nil, protoErr("PDV at byte %d declares %d bytes, outside its %d-byte PDU", pos, n, len(b))
		}
		ctrl := b[pos+5]
		out = append(out, pdv{context: b[pos+4], command: ctrl&1 != 0, last: ctrl&2 != 0, data: b[pos+6 : pos+4+n]})
		pos += 4 + n
	}
	return out, nil
}

// encodePData splits a message part into P-DATA-TF PDUs of at most max
// bytes (the peer's maximum; 0 means unlimited).
func writePData(w io.Writer, context byte, command bool, data []byte, max uint32) error {
	chunk := len(data)
	if max > 0 && int(max)-6 < chunk {
		chunk = int(max) - 6
	}
	if chunk < 1 {
		chunk = 1
	}
	for first := true; first || len(data) > 0; first = false {
		n := min(chunk, len(data))
		ctrl := byte(0)
		if command {
			ctrl |= 1
		}
		if n == len(data) {
			ctrl |= 2
		}
		body := make([]byte, 6, 6+n)
		binary.BigEndian.PutUint32(body, uint32(n+2))
		body[4], body[5] = context, ctrl
		body = append(body, data[:n]...)
		if err := writePDU(w, pduPData, body); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}
