// Package pickle reads and writes the pandas DataFrame pickles of the
// Mendeley "Lung cancer segmentation dataset with Lung-RADS class"
// (lung_cancer_train.pkl, 708 rows, about 3 GB; lung_cancer_test.pkl, 264
// rows): one row per CT slice, with object columns label1 (str), mask
// (int8 0/1 array, 512×512), hu_array_old (float HU array) and hu_array
// (HU times an automatic lung mask).
//
// # Streaming design
//
// pandas stores the object columns in one object block of shape
// (columns, rows) and numpy pickles an object array's elements in C order,
// so the file holds every mask before the first hu_array_old: rows cannot
// be decoded in one forward pass without holding the whole frame. The
// reader therefore works in two passes over an io.ReaderAt:
//
//  1. Open runs the pickle once. A translator (scan.go) walks the opcode
//     stream and hands github.com/nlpodyssey/gopickle's Unpickler an
//     equivalent stream in which each bytes-like payload (BINBYTES,
//     SHORT_BINBYTES, BINBYTES8, BYTEARRAY8) and each str payload longer
//     than 255 bytes (protocol 2 writes array data as
//     _codecs.encode(str, 'latin1')) is replaced by "BININT k; BINPERSID".
//     The unpickler's PersistentLoad then returns span k: the offset and
//     length of that payload in the file. The payload is skipped, never
//     read, so the pass reads little more than the pickle's own opcodes.
//     gopickle keeps the object model: its VM, memo, tuples, lists and
//     dicts, with FindClass resolving globals against an allow-list of Go
//     types (objects.go) that record their arguments and BUILD state
//     (PySetState): numpy's _reconstruct/_frombuffer arrays and dtypes,
//     pandas' DataFrame, BlockManager, blocks and Index classes.
//  2. Row (and Read, which emits ingest.Items) reads one row's cells with
//     ReadAt from their spans, checks shape and length before allocating,
//     and converts them. Read's items take a direct path (fast.go) for the
//     dataset's own layout (raw bytes payloads, C order, little-endian
//     float64 or float32 HU, 1-byte masks): the HU bytes are read in
//     128 KiB chunks into one reused buffer and converted straight to
//     int16 while the chunk is in cache, the mask bytes are read straight
//     into the mask and checked to be 0/1 eight at a time. Any other
//     layout or any problem in a row (a bad size, NaN, a mask value other
//     than 0 and 1) goes the general way, which gives the typed errors.
//     HU beyond int16 are clamped and counted in the item's
//     Meta.Warnings, as are label1 values that are not a str.
//
// Memory is one row's arrays plus the frame's structure, about a hundred
// bytes per cell; it does not grow with the array sizes or the file size.
//
// Why not gopickle alone: its Unpickler reads every payload into memory
// and memoizes it (the whole 3 GB), allocates declared lengths before
// reading them (a FRAME or BINBYTES8 header can ask for exabytes), and
// panics on some malformed streams (opcode 0xff, LONG1 of zero bytes, an
// odd DICT). The translator checks every length against the file and the
// limits in scan.go, refuses opcodes pandas never writes (persistent ids,
// extension codes, out-of-band buffers), drops FRAME headers (frames only
// group opcodes), and whatever panic remains is recovered into
// ErrCorrupt. gopickle returns its built-in types for three globals
// without asking FindClass (collections.OrderedDict, __builtin__.object,
// copy_reg._reconstructor); they are inert data and the layout check
// rejects them.
//
// # Versions
//
// Fixtures are written by pandas 1.5.3 with numpy 1.24 at protocols 2 to
// 5. pandas 1.4 and later, 2.x included, pickle the BlockManager through
// __reduce__ as BlockManager(blocks, axes) with blocks as
// _unpickle_block(values, placement, ndim); pre-1.4 pandas wrote NEWOBJ
// plus the "0.14.1" state dict, which is also accepted. The pandas 2.x
// paths were written from its sources (internals.pyx, Index.__reduce__)
// without a 2.x pickle to test against: numpy 2 module names
// (numpy._core.*) and pandas 2's Index of int64 instead of Int64Index are
// accepted. Protocol 1 also reads; protocol 0 text opcodes are refused.
// Not supported: extension-array blocks (pyarrow or the pandas 3
// str dtype), categorical labels, MultiIndex, numpy scalars; each fails
// with ErrUnknownClass or ErrLayout naming what it found.
//
// Security: nothing a pickle names is ever called. An unknown global
// (os.system, posix.system, builtins.eval, ...) stops the scan with a
// *ClassError wrapping ErrUnknownClass.
package pickle
