// Package dicomio reads CT slices from DICOM files.
//
// Read accepts Part 10 files of modality CT (or with no Modality at all,
// since some anonymisers strip it) holding one sample of 8 or 16 bits per
// pixel, single- or multi-frame, uncompressed (native) or in RLE Lossless
// or JPEG Lossless process 14 (encap.go, rle.go, jpegll.go). It converts
// stored values to Hounsfield units with RescaleSlope and
// RescaleIntercept, honouring PixelRepresentation, BitsStored and
// HighBit. Everything else (other compressed transfer syntaxes, non-image
// objects, other modalities, colour, truncated or oversized files, corrupt
// compressed data) is rejected with a *FormatError that wraps one of the
// Err sentinels.
//
// A file is read in one walk over its elements (scan.go), with the rules
// of the parser of github.com/suyashkumar/dicom but stricter: no declared
// length may run past the file or its enclosing element. The walk keeps
// each element's tag, VR and the place of its value in the file
// (dataset.go); the attributes Read needs are decoded from there on
// demand, as the parser would decode them, and the pixel values straight
// from the file's bytes, converted to HU in one pass (pixels.go). Nothing
// else of the file is decoded or copied. suyashkumar/dicom supplies the
// data dictionary (the VRs of implicit VR files) and the character sets;
// its parser is no longer on the path (parser_test.go keeps the former
// path as a test oracle). Files are written by pkg/dicomwrite.
//
// ReadFile, Decode and Read return fresh memory, the caller's to keep. A
// Decoder does the same work but reuses its pixel planes and buffers from
// one file to the next, for a caller that is done with the pixels before
// its next call (the ingest stage, which copies them into the outgoing
// message): no 512 KiB plane is allocated, zeroed and collected per
// 512×512 slice.
package dicomio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path/filepath"
	"strings"
	"sync"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

const (
	// Source is the SliceMeta.Source of slices read here.
	Source = "dicom"
	// DefaultSpacingMm is the pixel spacing used (with SpacingAssumed)
	// when a file has no PixelSpacing.
	DefaultSpacingMm = 0.7
	// MaxFileBytes bounds the size of a file Read loads into memory.
	MaxFileBytes = 512 << 20
	// MaxFrames bounds NumberOfFrames.
	MaxFrames = dicomwrite.MaxFrames
	// MinSpacingMm and MaxSpacingMm bound PixelSpacing: a value outside
	// is an error (CT pixels are about 0.2 to 2 mm).
	MinSpacingMm, MaxSpacingMm = 0.01, 50.0
)

// Frame is one decoded frame of a file.
type Frame struct {
	HU *imgx.HU
	// Position is ImagePositionPatient z (per frame for enhanced
	// multi-frame files), else SliceLocation, else InstanceNumber, else 0.
	Position float64
	// SpacingRowMm and SpacingColMm come from PixelSpacing, or are
	// DefaultSpacingMm with SpacingAssumed set.
	SpacingRowMm, SpacingColMm float64
	SpacingAssumed             bool
	// Warnings say what was accepted but changed (HU clamped to int16);
	// Read puts them in SliceMeta.Warnings.
	Warnings []string
}

// Image is the decoded content of one DICOM file.
type Image struct {
	StudyUID, SeriesUID, InstanceUID string
	// Study holds the patient and study attributes that results sent
	// back (DICOM SEG) must repeat so that a PACS files them with the
	// source. They identify the patient: never log them.
	Study          dicomwrite.StudyAttrs
	TransferSyntax string
	Rows, Cols     int
	// MultiFrame is true when the file declares NumberOfFrames (even 1).
	MultiFrame bool
	Frames     []Frame
}

// Read reads the DICOM file at path and emits one Item per frame.
//
// Meta.Id is the path relative to root, slash-separated, without a .dcm
// or .dicom extension (with root "" or a path outside root, the base
// name); frames of a multi-frame file get "-f001", "-f002"... Frame is
// the 1-based frame number (1 for single-frame files).
//
// When masksDir is not empty the ground truth of a slice is the PNG
// masksDir/<Id>.png (for a single-frame file, the relative path with .png
// in place of .dcm, or .png appended when there is no .dcm extension);
// nonzero pixels are nodule. A missing mask gives a nil Item.Mask; an
// unreadable mask or one of another size gives an Item with Err.
//
// A file that cannot be read is emitted as one Item with Err set (and
// Meta.Id) and Read returns nil, so that a folder scan goes on. Read
// returns an error only when ctx is done or fn fails.
//
// The items' pixels are fresh memory, the caller's to keep; a reader that
// drops or copies them before fn returns can save that memory with
// Decoder.Read.
func Read(ctx context.Context, path, root, masksDir string, fn ingest.EmitFunc) error {
	return read(ctx, nil, path, root, masksDir, fn)
}

// Read is the package's Read decoding with d: the Item.HU it emits are
// d's (Decoder), valid only until fn returns. fn must copy the pixels it
// needs (or drop them) before it returns, and keep no Item.HU after: the
// next frame or file read with d may overwrite them. The rest of an Item
// (Meta, Mask, Err) is fn's to keep.
func (d *Decoder) Read(ctx context.Context, path, root, masksDir string, fn ingest.EmitFunc) error {
	return read(ctx, d, path, root, masksDir, fn)
}

// read is Read with d nil (fresh memory) or Decoder.Read.
func read(ctx context.Context, d *Decoder, path, root, masksDir string, fn ingest.EmitFunc) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	id := ID(path, root)
	img, err := readFile(d, path)
	if err != nil {
		return fn(ingest.Item{Meta: &lungsegv1.SliceMeta{Id: id, Source: Source}, Err: err})
	}
	for i, fr := range img.Frames {
		if err := ctx.Err(); err != nil {
			return err
		}
		meta := &lungsegv1.SliceMeta{
			Id:             id,
			Source:         Source,
			StudyUid:       img.StudyUID,
			SeriesUid:      img.SeriesUID,
			InstanceUid:    img.InstanceUID,
			Frame:          int32(i + 1),
			Rows:           int32(img.Rows),
			Cols:           int32(img.Cols),
			SpacingRowMm:   fr.SpacingRowMm,
			SpacingColMm:   fr.SpacingColMm,
			SpacingAssumed: fr.SpacingAssumed,
			SlicePosition:  fr.Position,
			Warnings:       fr.Warnings,
		}
		if img.MultiFrame {
			meta.Id = fmt.Sprintf("%s-f%03d", id, i+1)
		}
		it := ingest.Item{Meta: meta, HU: fr.HU}
		if masksDir != "" {
			it.Mask, it.Err = readMask(MaskPath(masksDir, meta.Id), img.Rows, img.Cols)
			if it.Err != nil {
				it.HU = nil
			}
		}
		if err := fn(it); err != nil {
			return err
		}
	}
	return nil
}

// ID returns the slice id of a file (before any frame suffix): the path
// relative to root, slash-separated, without a .dcm or .dicom extension
// (any case). With root "" or a path outside root it is the base name.
func ID(path, root string) string {
	rel := filepath.Base(path)
	if root != "" {
		if r, err := filepath.Rel(root, path); err == nil && r != ".." && !strings.HasPrefix(r, ".."+string(filepath.Separator)) {
			rel = r
		}
	}
	rel = filepath.ToSlash(rel)
	switch ext := filepath.Ext(rel); strings.ToLower(ext) {
	case ".dcm", ".dicom":
		rel = strings.TrimSuffix(rel, ext)
	}
	return rel
}

// MaskPath returns the ground-truth mask of the slice with the given id:
// masksDir/<id>.png.
func MaskPath(masksDir, id string) string {
	return filepath.Join(masksDir, filepath.FromSlash(id)) + ".png"
}

func readMask(path string, rows, cols int) (*imgx.Mask, error) {
	m, err := pngpair.ReadMask(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dicomio: reading mask: %w", err)
	}
	if m.Rows != rows || m.Cols != cols {
		return nil, &FormatError{Path: path, Offset: -1, Err: ErrMaskShape,
			Msg: fmt.Sprintf("mask is %d×%d but the slice is %d×%d", m.Rows, m.Cols, rows, cols)}
	}
	return m, nil
}

// Decoder decodes DICOM files like the package's ReadFile and Decode,
// but reuses its memory from one call to the next, in the manner of
// bufio.Scanner.Bytes: the pixels of an Image it returns (every
// Frame.HU.Pix) are valid only until the next call of ReadFile, Decode or
// Read on the same Decoder, which overwrites them (or hands part of their
// memory to an image of another size). Everything else of the Image (the
// UIDs, Study, positions, spacings, warnings, the *imgx.HU headers) is the
// caller's to keep. A caller that keeps pixels past the next call, or
// hands them to another goroutine, must copy them first, or use the
// package's ReadFile, Decode and Read, which return fresh memory.
//
// A Decoder owns the pixel planes alone: the buffers that never leave a
// call (the file's bytes, the scan's records, a decompressed frame) come
// from the package's pools, for ReadFile and Decode as well. Planes over
// maxPlaneBytes (enhanced multi-frame files) are allocated for their call
// alone and not kept. Every decode writes every pixel of the planes it
// returns: nothing of an earlier file shows through, whatever the sizes.
//
// The zero Decoder is ready to use. A Decoder is not safe for concurrent
// use: give each goroutine its own (the ingest stage has one per job).
type Decoder struct {
	plane []int16 // the frames' pixels, one frame after the other
}

// maxPlaneBytes bounds the plane a Decoder keeps (64 frames of 512×512).
const maxPlaneBytes = 32 << 20

// planes returns n pixels for the frames of one file: d's plane (grown
// when too small) or, over the bound, fresh memory.
func (d *Decoder) planes(n int) []int16 {
	if 2*n > maxPlaneBytes {
		return make([]int16, n)
	}
	if cap(d.plane) < n {
		d.plane = make([]int16, n)
	}
	return d.plane[:n]
}

// ReadFile reads and decodes one DICOM file. The Image is fresh memory,
// the caller's to keep.
func ReadFile(path string) (*Image, error) { return readFile(nil, path) }

// ReadFile reads and decodes one DICOM file. The Image's pixels are d's:
// valid only until d's next call (see Decoder).
func (d *Decoder) ReadFile(path string) (*Image, error) { return readFile(d, path) }

// readFile is ReadFile with d nil (fresh memory) or Decoder.ReadFile.
func readFile(d *Decoder, path string) (*Image, error) {
	f, err := ingest.OpenFile(path) // never blocks on a named pipe
	if err != nil {
		return nil, fmt.Errorf("dicomio: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("dicomio: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, formatErr(path, ErrNotDICOM, "not a regular file")
	}
	if st.Size() > MaxFileBytes {
		return nil, formatErr(path, ErrTooLarge, "file is %d bytes, over the %d-byte limit", st.Size(), MaxFileBytes)
	}
	buf := getFileBuf(int(st.Size()))
	defer putFileBuf(buf)
	b := (*buf)[:st.Size()]
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("dicomio: reading %s: %w", path, err)
	}
	// Decode keeps no reference to b: the Image holds copies.
	return decodeNamed(d, path, b)
}

// maxPooledBytes bounds the byte buffers kept for reuse; larger files
// and frames get a buffer of their own.
const maxPooledBytes = 8 << 20

// fileBufs holds the byte buffers of ReadFile (the file's bytes) and of
// decode (a decompressed frame, 8-bit samples unswapped), so that reading
// a series does not allocate (and zero, and collect) them per file. A
// buffer is in use only during the call that took it: nothing returned
// refers to it, and it may hold anything when taken.
var fileBufs sync.Pool

func getFileBuf(n int) *[]byte {
	if n <= maxPooledBytes {
		if p, ok := fileBufs.Get().(*[]byte); ok {
			if cap(*p) >= n {
				return p
			}
			fileBufs.Put(p)
		}
	}
	b := make([]byte, n)
	return &b
}

func putFileBuf(p *[]byte) {
	if cap(*p) <= maxPooledBytes {
		fileBufs.Put(p)
	}
}

// Decode decodes the bytes of one DICOM file; name is used in errors. The
// Image keeps no reference to b and is fresh memory, the caller's to keep.
func Decode(name string, b []byte) (*Image, error) { return decodeNamed(nil, name, b) }

// Decode decodes the bytes of one DICOM file; name is used in errors. The
// Image keeps no reference to b; its pixels are d's, valid only until d's
// next call (see Decoder).
func (d *Decoder) Decode(name string, b []byte) (*Image, error) { return decodeNamed(d, name, b) }

func decodeNamed(d *Decoder, name string, b []byte) (*Image, error) {
	img, err := decode(d, b)
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) && fe.Path == "" {
			fe.Path = name
		}
		return nil, err
	}
	return img, nil
}

func decode(d *Decoder, b []byte) (*Image, error) {
	if len(b) > MaxFileBytes {
		return nil, formatErr("", ErrTooLarge, "file is %d bytes, over the %d-byte limit", len(b), MaxFileBytes)
	}
	fp := getRecords()
	defer putRecords(fp)
	sr, err := scanInto(b, *fp)
	if err != nil {
		return nil, err
	}
	*fp = sr.ds.flat // grown by the scan: kept for the next file
	return fromDataset(d, &sr, b)
}

// maxPooledRecords bounds the record lists decode keeps for reuse (32
// bytes each; a CT file has tens to hundreds).
const maxPooledRecords = 1 << 14

// recordLists holds the record lists of decode: a dataset lives only
// while its file is decoded (the Image holds copies of its values), so
// reading a series reuses one list instead of allocating one per file.
var recordLists = sync.Pool{New: func() any { return new([]record) }}

func getRecords() *[]record { return recordLists.Get().(*[]record) }

func putRecords(p *[]record) {
	if cap(*p) <= maxPooledRecords {
		*p = (*p)[:0]
		recordLists.Put(p)
	}
}

// frameScope finds where attribute t of frame i lives: the per-frame
// functional group, else the shared one, else the top level.
type frameScope struct {
	top      elements
	shared   elements
	perFrame []elements
}

func (fs frameScope) lookup(i int, t tag.Tag) elements {
	if i < len(fs.perFrame) {
		if es := macro(fs.perFrame[i], t); !es.empty() {
			return es
		}
	}
	if es := macro(fs.shared, t); !es.empty() {
		return es
	}
	return fs.top
}

// pixelFormat is the checked layout of the native pixel data.
type pixelFormat struct {
	rows, cols, frames int
	bitsAllocated      int
	bitsStored         int
	highBit            int
	signed             bool
	bo                 binary.ByteOrder
	swap8              bool // 8-bit samples in a big-endian OW value
}

// fromDataset decodes file b, which scanFile described as sr: sr.ds its
// elements, sr.pixel the native pixel data, sr.pixelItems the offset in b
// of the items of encapsulated pixel data, or -1. The pixels go to d's
// buffers (Decoder), or to fresh memory, one allocation per frame, when d
// is nil.
func fromDataset(d *Decoder, sr *scanResult, b []byte) (*Image, error) {
	ts := sr.uid
	top := sr.ds.top()
	if !sr.pixelSeen {
		return nil, formatErr("", ErrNoPixelData, "no pixel data element (SOP class %s, modality %q)",
			top.str(tag.SOPClassUID), top.str(tag.Modality))
	}
	if m := top.str(tag.Modality); m != "" && !strings.EqualFold(m, "CT") {
		return nil, formatErr("", ErrNotCT, "modality is %s, not CT", m)
	}
	pf, err := pixelLayout(top, ts, sr.pixelVR)
	if err != nil {
		return nil, err
	}
	var raw []byte
	// compressed decodes frame i of an encapsulated syntax (encap.go).
	var compressed func(i int, dst []byte) error
	if _, ok := encapsulatedSyntaxes[ts]; ok {
		if compressed, err = encapsulatedFrames(b, sr.pixelItems, ts, pf); err != nil {
			return nil, err
		}
	} else {
		if sr.pixelUndefined {
			return nil, formatErr("", ErrPixelFormat, "pixel data is encapsulated (undefined length) in the native transfer syntax %s", ts)
		}
		raw = sr.pixel
		need := int64(pf.rows) * int64(pf.cols) * int64(pf.frames) * int64(pf.bitsAllocated/8)
		if n := int64(len(raw)); n != need && !(n == need+1 && need%2 == 1) {
			return nil, formatErr("", ErrPixelFormat, "pixel data has %d bytes, want %d for %d frame(s) of %d×%d at %d bits",
				n, need, pf.frames, pf.rows, pf.cols, pf.bitsAllocated)
		}
	}
	scope := frameScope{top: top}
	if sh := top.items(tag.SharedFunctionalGroupsSequence); len(sh) > 0 {
		scope.shared = sh[0]
	}
	scope.perFrame = top.items(tag.PerFrameFunctionalGroupsSequence)

	img := &Image{
		Study: dicomwrite.StudyAttrs{
			PatientName: top.str(tag.PatientName), PatientID: top.str(tag.PatientID),
			PatientBirthDate: top.str(tag.PatientBirthDate), PatientSex: top.str(tag.PatientSex),
			StudyDate: top.str(tag.StudyDate), StudyTime: top.str(tag.StudyTime), StudyID: top.str(tag.StudyID),
			AccessionNumber: top.str(tag.AccessionNumber), ReferringPhysicianName: top.str(tag.ReferringPhysicianName),
		},
		StudyUID:       top.str(tag.StudyInstanceUID),
		SeriesUID:      top.str(tag.SeriesInstanceUID),
		InstanceUID:    top.str(tag.SOPInstanceUID),
		TransferSyntax: ts,
		Rows:           pf.rows,
		Cols:           pf.cols,
		MultiFrame:     top.find(tag.NumberOfFrames) != nil,
		Frames:         make([]Frame, pf.frames),
	}
	if pf.swap8 {
		// 8-bit samples in a big-endian OW value: the bytes of each 16-bit
		// word are swapped across the whole value, not per frame.
		// (sw is pooled: every byte is written, the last of an odd
		// length, which has no partner, with 0.)
		p := getFileBuf(len(raw))
		defer putFileBuf(p)
		sw := (*p)[:len(raw)]
		for i := range sw {
			sw[i] = 0
			if j := i ^ 1; j < len(raw) {
				sw[i] = raw[j]
			}
		}
		raw = sw
	}
	frameBytes := pf.rows * pf.cols * pf.bitsAllocated / 8
	var buf []byte
	if compressed != nil {
		p := getFileBuf(frameBytes)
		defer putFileBuf(p)
		buf = (*p)[:frameBytes]
	}
	// The frames' pixels: one plane of d's for all of them (frame i is
	// the i-th rows×cols run), or fresh memory per frame, so that a
	// caller keeping one frame does not keep the others.
	n := pf.rows * pf.cols
	var plane []int16
	if d != nil {
		plane = d.planes(n * pf.frames)
	}
	for i := range img.Frames {
		fr := &img.Frames[i]
		slope, intercept, err := rescale(scope, i)
		if err != nil {
			return nil, err
		}
		if err := checkRescale(pf, slope, intercept); err != nil {
			return nil, err
		}
		src := buf
		if compressed == nil {
			src = raw[i*frameBytes : (i+1)*frameBytes]
		} else if err := compressed(i, buf); err != nil {
			return nil, err
		}
		var extreme bool
		var dst []int16
		if plane != nil {
			dst = plane[i*n : (i+1)*n : (i+1)*n]
		} else {
			dst = make([]int16, n)
		}
		fr.HU, extreme = decodeFrame(dst, src, pf, slope, intercept)
		// Every clamped pixel holds an int16 extreme, so the exact count
		// (per pixel, in float) runs only on a frame that has one: a CT
		// with signed stored values and intercept -1024 can reach below
		// the range in principle, but almost never does. The usual
		// layouts find extremes while decoding (extreme false: none).
		if lo, hi := huRange(pf, slope, intercept); (lo < math.MinInt16 || hi > math.MaxInt16) && extreme && hasExtreme(fr.HU.Pix) {
			if n, first, v := countOutside(src, pf, slope, intercept); n > 0 {
				fr.Warnings = append(fr.Warnings, fmt.Sprintf(
					"%d of %d pixels outside the int16 HU range clamped to it (the first, at pixel %d (row %d, col %d), is %g HU: RescaleSlope %g and RescaleIntercept %g map the stored values to %g..%g HU)",
					n, len(fr.HU.Pix), first, first/pf.cols, first%pf.cols, v, slope, intercept, lo, hi))
			}
		}
		if fr.SpacingRowMm, fr.SpacingColMm, fr.SpacingAssumed, err = spacing(scope, i); err != nil {
			return nil, err
		}
		if fr.Position, err = position(scope, i); err != nil {
			return nil, err
		}
	}
	if sr.ds.err != nil {
		return nil, sr.ds.err
	}
	return img, nil
}

// pixelLayout reads and checks the pixel attributes; pixelVR is the VR of
// the PixelData element.
func pixelLayout(top elements, ts, pixelVR string) (pixelFormat, error) {
	pf := pixelFormat{bo: binary.LittleEndian} // decoded compressed frames are little endian
	if n, ok := nativeSyntaxes[ts]; ok {
		pf.bo = n.bo
	}
	get := func(t tag.Tag, def int, required bool) (int, error) {
		v, ok, err := top.integer(t)
		if err != nil {
			return 0, formatErr("", ErrPixelFormat, "%v", err)
		}
		if !ok {
			if required {
				return 0, formatErr("", ErrPixelFormat, "missing %s", tag.DebugString(t))
			}
			return def, nil
		}
		return v, nil
	}
	var err error
	if pf.rows, err = get(tag.Rows, 0, true); err != nil {
		return pf, err
	}
	if pf.cols, err = get(tag.Columns, 0, true); err != nil {
		return pf, err
	}
	if err := imgx.CheckSize(pf.rows, pf.cols); err != nil {
		return pf, formatErr("", ErrTooLarge, "declared size %d×%d: %v", pf.rows, pf.cols, err)
	}
	if pf.frames, err = get(tag.NumberOfFrames, 1, false); err != nil {
		return pf, err
	}
	if pf.frames < 1 || pf.frames > MaxFrames {
		return pf, formatErr("", ErrTooLarge, "NumberOfFrames %d is outside 1..%d", pf.frames, MaxFrames)
	}
	spp, err := get(tag.SamplesPerPixel, 1, false)
	if err != nil {
		return pf, err
	}
	if spp != 1 {
		return pf, formatErr("", ErrPixelFormat, "%d samples per pixel (colour); CT must have 1", spp)
	}
	if pi := strings.ToUpper(top.str(tag.PhotometricInterpretation)); pi != "" && pi != "MONOCHROME1" && pi != "MONOCHROME2" {
		return pf, formatErr("", ErrPixelFormat, "photometric interpretation %s; CT must be MONOCHROME2", pi)
	}
	if pf.bitsAllocated, err = get(tag.BitsAllocated, 0, true); err != nil {
		return pf, err
	}
	if pf.bitsAllocated != 8 && pf.bitsAllocated != 16 {
		return pf, formatErr("", ErrPixelFormat, "BitsAllocated %d; only 8 and 16 are supported", pf.bitsAllocated)
	}
	if pf.bitsStored, err = get(tag.BitsStored, pf.bitsAllocated, false); err != nil {
		return pf, err
	}
	if pf.bitsStored < 1 || pf.bitsStored > pf.bitsAllocated {
		return pf, formatErr("", ErrPixelFormat, "BitsStored %d with BitsAllocated %d", pf.bitsStored, pf.bitsAllocated)
	}
	if pf.highBit, err = get(tag.HighBit, pf.bitsStored-1, false); err != nil {
		return pf, err
	}
	if pf.highBit < pf.bitsStored-1 || pf.highBit >= pf.bitsAllocated {
		return pf, formatErr("", ErrPixelFormat, "HighBit %d with BitsStored %d and BitsAllocated %d", pf.highBit, pf.bitsStored, pf.bitsAllocated)
	}
	rep, err := get(tag.PixelRepresentation, 0, false)
	if err != nil {
		return pf, err
	}
	if rep != 0 && rep != 1 {
		return pf, formatErr("", ErrPixelFormat, "PixelRepresentation %d", rep)
	}
	pf.signed = rep == 1
	if pf.bitsAllocated == 8 && pf.bo == binary.BigEndian && pixelVR == "OW" {
		pf.swap8 = true
	}
	return pf, nil
}

// rescale returns RescaleSlope and RescaleIntercept of frame i (defaults 1
// and 0).
func rescale(scope frameScope, i int) (slope, intercept float64, err error) {
	slope, intercept = 1, 0
	if v, err := scope.lookup(i, tag.RescaleSlope).floats(tag.RescaleSlope); err != nil {
		return 0, 0, formatErr("", ErrPixelFormat, "%v", err)
	} else if len(v) > 0 {
		slope = v[0]
	}
	if v, err := scope.lookup(i, tag.RescaleIntercept).floats(tag.RescaleIntercept); err != nil {
		return 0, 0, formatErr("", ErrPixelFormat, "%v", err)
	} else if len(v) > 0 {
		intercept = v[0]
	}
	if slope == 0 {
		return 0, 0, formatErr("", ErrPixelFormat, "RescaleSlope is 0")
	}
	return slope, intercept, nil
}

// checkRescale refuses a rescale that puts every stored value outside
// the int16 HU range: nothing of the image would be left after clamping.
func checkRescale(pf pixelFormat, slope, intercept float64) error {
	lo, hi := huRange(pf, slope, intercept)
	if hi < math.MinInt16-0.5 || lo >= math.MaxInt16+0.5 {
		return formatErr("", ErrPixelFormat, "RescaleSlope %g and RescaleIntercept %g map every stored value to %g..%g HU, outside the int16 range [-32768, 32767]",
			slope, intercept, lo, hi)
	}
	return nil
}

// huRange is the HU range the stored values of pf can map to.
func huRange(pf pixelFormat, slope, intercept float64) (lo, hi float64) {
	smin, smax := 0.0, math.Ldexp(1, pf.bitsStored)-1
	if pf.signed {
		smin, smax = -math.Ldexp(1, pf.bitsStored-1), math.Ldexp(1, pf.bitsStored-1)-1
	}
	lo, hi = smin*slope+intercept, smax*slope+intercept
	if lo > hi {
		lo, hi = hi, lo
	}
	return lo, hi
}

// hasExtreme reports whether any of pix is math.MinInt16 or math.MaxInt16,
// the values clamping leaves. It folds eight pixels a step into two
// accumulators without a branch.
func hasExtreme(pix []int16) bool {
	var lo, hi int16 = math.MaxInt16, math.MinInt16
	for len(pix) >= 8 {
		p := pix[:8]
		lo = min(lo, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7])
		hi = max(hi, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7])
		pix = pix[8:]
	}
	for _, v := range pix {
		lo, hi = min(lo, v), max(hi, v)
	}
	return lo == math.MinInt16 || hi == math.MaxInt16
}

// countOutside counts the pixels of a frame whose HU (rounded) fall
// outside int16, the first of them and its HU. It is called only when the
// rescale allows such values, so most files never pay for it.
func countOutside(raw []byte, pf pixelFormat, slope, intercept float64) (n, first int, firstHU float64) {
	smp := newSampler(pf)
	for i := range pf.rows * pf.cols {
		if h := math.Round(float64(smp.at(raw, i))*slope + intercept); h < math.MinInt16 || h > math.MaxInt16 {
			if n == 0 {
				first, firstHU = i, h
			}
			n++
		}
	}
	return n, first, firstHU
}

func spacing(scope frameScope, i int) (row, col float64, assumed bool, err error) {
	v, err := scope.lookup(i, tag.PixelSpacing).floats(tag.PixelSpacing)
	if err != nil {
		return 0, 0, false, formatErr("", ErrPixelFormat, "%v", err)
	}
	switch {
	case len(v) == 0:
		return DefaultSpacingMm, DefaultSpacingMm, true, nil
	case len(v) != 2 || v[0] <= 0 || v[1] <= 0:
		return 0, 0, false, formatErr("", ErrPixelFormat, "PixelSpacing %v is not two positive numbers", v)
	case v[0] < MinSpacingMm || v[0] > MaxSpacingMm || v[1] < MinSpacingMm || v[1] > MaxSpacingMm:
		// Sizes in mm (nodule diameters, the Lung-RADS category) would
		// be wrong by orders of magnitude: refuse rather than guess.
		return 0, 0, false, formatErr("", ErrPixelFormat, "PixelSpacing %g\\%g mm is outside %g..%g mm, not a CT pixel size", v[0], v[1], MinSpacingMm, MaxSpacingMm)
	}
	return v[0], v[1], false, nil
}

func position(scope frameScope, i int) (float64, error) {
	v, err := scope.lookup(i, tag.ImagePositionPatient).floats(tag.ImagePositionPatient)
	if err != nil {
		return 0, formatErr("", ErrPixelFormat, "%v", err)
	}
	if len(v) == 3 {
		return v[2], nil
	}
	if v, err := scope.top.floats(tag.SliceLocation); err == nil && len(v) > 0 {
		return v[0], nil
	}
	if n, ok, err := scope.top.integer(tag.InstanceNumber); err == nil && ok {
		return float64(n), nil
	}
	return 0, nil
}
