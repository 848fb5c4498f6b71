package dicomweb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// FileMeta is what the file meta information (group 0002) of a Part 10
// file says about the instance it holds.
type FileMeta struct {
	SOPClassUID, SOPInstanceUID, TransferSyntax string
}

// maxMetaBytes bounds the group 0002 elements read; real headers are a
// few hundred bytes.
const maxMetaBytes = 64 << 10

// ReadFileMeta reads the file meta information of a Part 10 file: the
// 128-byte preamble, "DICM", then explicit VR little endian group 0002
// elements. It reads no further than the group and never allocates from
// a declared length. A file without the preamble, or whose group 0002 is
// malformed, gives an error.
func ReadFileMeta(b []byte) (FileMeta, error) {
	var m FileMeta
	if len(b) < 132 || !bytes.Equal(b[128:132], []byte("DICM")) {
		return m, fmt.Errorf("dicomweb: not a DICOM Part 10 file (no \"DICM\" after the 128-byte preamble)")
	}
	pos := 132
	for pos+8 <= len(b) && pos-132 < maxMetaBytes {
		group := binary.LittleEndian.Uint16(b[pos:])
		if group != 0x0002 {
			break
		}
		elem := binary.LittleEndian.Uint16(b[pos+2:])
		vr := string(b[pos+4 : pos+6])
		var vl, hdr int
		switch vr {
		case "OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV":
			if pos+12 > len(b) {
				return m, fmt.Errorf("dicomweb: file meta element (0002,%04X) at byte %d is truncated", elem, pos)
			}
			vl, hdr = int(binary.LittleEndian.Uint32(b[pos+8:])), 12
		default:
			vl, hdr = int(binary.LittleEndian.Uint16(b[pos+6:])), 8
		}
		if vl < 0 || vl > len(b)-pos-hdr {
			return m, fmt.Errorf("dicomweb: file meta element (0002,%04X) at byte %d declares %d bytes, past the end of the file", elem, pos, uint32(vl))
		}
		v := b[pos+hdr : pos+hdr+vl]
		switch elem {
		case 0x0002:
			m.SOPClassUID = trimUID(v)
		case 0x0003:
			m.SOPInstanceUID = trimUID(v)
		case 0x0010:
			m.TransferSyntax = trimUID(v)
		}
		pos += hdr + vl
	}
	if m.TransferSyntax == "" {
		return m, fmt.Errorf("dicomweb: file meta information has no TransferSyntaxUID")
	}
	return m, nil
}

func trimUID(v []byte) string { return strings.TrimRight(string(v), " \x00") }
