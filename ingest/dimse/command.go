package dimse

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Command fields (PS3.7 §E.1).
const (
	cStoreRQ  = 0x0001
	cStoreRSP = 0x8001
	cEchoRQ   = 0x0030
	cEchoRSP  = 0x8030
)

// noDataSet is CommandDataSetType when no data set follows.
const noDataSet = 0x0101

// maxCommandBytes bounds a command set (a C-STORE-RQ is ~200 bytes).
const maxCommandBytes = 16 << 10

// command is a DIMSE command set, group 0000 in implicit VR little endian.
type command struct {
	field            uint16
	messageID        uint16
	respondingTo     uint16
	dataSetType      uint16
	status           uint16
	sopClass, sopUID string
	moveAE           string
	errorComment     string
	hasDataSet       bool
}

// parseCommand reads the elements of a command set; unknown elements of
// group 0000 are skipped, other groups are an error.
func parseCommand(b []byte) (*command, error) {
	c := &command{}
	seen := false
	for pos := 0; pos < len(b); {
		if pos+8 > len(b) {
			return nil, protoErr("command element header at byte %d runs past the command set", pos)
		}
		group, elem := binary.LittleEndian.Uint16(b[pos:]), binary.LittleEndian.Uint16(b[pos+2:])
		n := int(binary.LittleEndian.Uint32(b[pos+4:]))
		if group != 0 {
			return nil, protoErr("command set holds element (%04X,%04X)", group, elem)
		}
		if n < 0 || n > len(b)-pos-8 {
			return nil, protoErr("command element (0000,%04X) declares %d bytes, past the end of the command set", elem, uint32(n))
		}
		v := b[pos+8 : pos+8+n]
		us := func() (uint16, error) {
			if len(v) != 2 {
				return 0, protoErr("command element (0000,%04X) has %d bytes, want 2", elem, len(v))
			}
			return binary.LittleEndian.Uint16(v), nil
		}
		var err error
		switch elem {
		case 0x0002:
			c.sopClass = uidString(v)
		case 0x0100:
			c.field, err = us()
			seen = true
		case 0x0110:
			c.messageID, err = us()
		case 0x0120:
			c.respondingTo, err = us()
		case 0x0800:
			c.dataSetType, err = us()
		case 0x0900:
			c.status, err = us()
		case 0x1000:
			c.sopUID = uidString(v)
		case 0x0600:
			c.moveAE = strings.TrimSpace(string(v))
		}
		if err != nil {
			return nil, err
		}
		pos += 8 + n
	}
	if !seen {
		return nil, protoErr("command set has no CommandField")
	}
	c.hasDataSet = c.dataSetType != noDataSet
	return c, nil
}

type cmdWriter struct{ b []byte }

func (w *cmdWriter) elem(e uint16, v []byte) {
	w.b = binary.LittleEndian.AppendUint16(w.b, 0)
	w.b = binary.LittleEndian.AppendUint16(w.b, e)
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(v)))
	w.b = append(w.b, v...)
}

func (w *cmdWriter) us(e uint16, v uint16) { w.elem(e, binary.LittleEndian.AppendUint16(nil, v)) }

// encode writes a response command set, group length first.
func (c *command) encode() []byte {
	w := &cmdWriter{}
	if c.sopClass != "" {
		w.elem(0x0002, evenUID(c.sopClass))
	}
	w.us(0x0100, c.field)
	w.us(0x0120, c.respondingTo)
	w.us(0x0800, noDataSet)
	w.us(0x0900, c.status)
	if c.errorComment != "" {
		s := shortComment(c.errorComment)
		if len(s)%2 == 1 {
			s += " "
		}
		w.elem(0x0902, []byte(s))
	}
	if c.sopUID != "" {
		w.elem(0x1000, evenUID(c.sopUID))
	}
	out := &cmdWriter{}
	out.elem(0x0000, binary.LittleEndian.AppendUint32(nil, uint32(len(w.b))))
	return append(out.b, w.b...)
}

// Part10 wraps a data set received in transfer syntax ts into a DICOM
// Part 10 file: the 128-byte preamble, "DICM" and the file meta
// information (explicit VR little endian) naming the SOP class and
// instance, the transfer syntax and the sending AE title.
func Part10(sopClass, sopInstance, ts, sourceAE string, dataset []byte) []byte {
	var meta []byte
	add := func(elem uint16, vr string, v []byte) {
		meta = binary.LittleEndian.AppendUint16(meta, 0x0002)
		meta = binary.LittleEndian.AppendUint16(meta, elem)
		meta = append(meta, vr...)
		if vr == "OB" {
			meta = append(meta, 0, 0)
			meta = binary.LittleEndian.AppendUint32(meta, uint32(len(v)))
		} else {
			meta = binary.LittleEndian.AppendUint16(meta, uint16(len(v)))
		}
		meta = append(meta, v...)
	}
	pad := func(s string) []byte {
		if len(s)%2 == 1 {
			s += " "
		}
		return []byte(s)
	}
	add(0x0001, "OB", []byte{0, 1})
	add(0x0002, "UI", evenUID(sopClass))
	add(0x0003, "UI", evenUID(sopInstance))
	add(0x0010, "UI", evenUID(ts))
	add(0x0012, "UI", evenUID(ImplementationClassUID))
	add(0x0013, "SH", pad(ImplementationVersion))
	if sourceAE != "" {
		add(0x0016, "AE", pad(sourceAE))
	}
	out := make([]byte, 128, 128+4+12+len(meta)+len(dataset))
	out = append(out, "DICM"...)
	out = binary.LittleEndian.AppendUint16(out, 0x0002)
	out = binary.LittleEndian.AppendUint16(out, 0x0000)
	out = append(out, "UL"...)
	out = binary.LittleEndian.AppendUint16(out, 4)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(meta)))
	out = append(out, meta...)
	return append(out, dataset...)
}

func (c *command) String() string {
	return fmt.Sprintf("command 0x%04x msg %d class %s instance %s", c.field, c.messageID, c.sopClass, c.sopUID)
}

// shortComment fits an error text into an ErrorComment (LO, 64 bytes):
// leading "context: " segments are dropped first, since the cause is at
// the end, then the rest is cut.
func shortComment(s string) string {
	for len(s) > 64 {
		i := strings.Index(s, ": ")
		if i < 0 {
			break
		}
		s = s[i+2:]
	}
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}
