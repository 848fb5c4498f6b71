package pickle_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pickle"
)

func u64(v uint64) string { return string(binary.LittleEndian.AppendUint64(nil, v)) }
func u32(v uint32) string { return string(binary.LittleEndian.AppendUint32(nil, v)) }

// TestBrokenFiles checks the file-level failures: each fixture and
// hand-made stream gives its sentinel (and message), none panics, and
// Read emits nothing for them.
func TestBrokenFiles(t *testing.T) {
	fixture := func(name string) string {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	good := fixture("p4_f8.pkl") // one frame
	p2 := fixture("p2_f8.pkl")   // no frames
	tests := []struct {
		name string
		data string
		want error
		msg  string
	}{
		{"truncated fixture", fixture("broken_truncated.pkl"), pickle.ErrTruncated, "left in the file"},
		{"truncated frame", good[:len(good)-1], pickle.ErrTruncated, "left in the file"},
		{"no STOP", p2[:len(p2)-1], pickle.ErrTruncated, "no STOP"},
		{"truncated protocol 2", p2[:len(p2)/2], pickle.ErrTruncated, ""},
		{"truncated inside a payload", good[:len(good)*3/4], pickle.ErrTruncated, ""},
		{"empty", "", pickle.ErrTruncated, ""},
		{"unknown class fixture", fixture("broken_unknown_class.pkl"), pickle.ErrUnknownClass, "posix.system"},
		{"GLOBAL os.system", "\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.", pickle.ErrUnknownClass, "class os.system not on the allow-list"},
		{"STACK_GLOBAL builtins.eval", "\x80\x04\x8c\x08builtins\x8c\x04eval\x93.", pickle.ErrUnknownClass, "builtins.eval"},
		{"not a DataFrame", fixture("broken_not_frame.pkl"), pickle.ErrLayout, "holds a Dict"},
		{"a bare int", "\x80\x04K\x07.", pickle.ErrLayout, "holds a int"},
		{"no hu_array_old", fixture("broken_missing_column.pkl"), pickle.ErrLayout, "no hu_array_old column"},
		{"two mask columns", fixture("broken_duplicate_mask.pkl"), pickle.ErrLayout, "column mask appears 2 times (positions 1, 4)"},
		{"BINBYTES8 of 2^60", "\x80\x04\x8e" + u64(1<<60) + "xx.", pickle.ErrTooLarge, "payload of 1152921504606846976 bytes"},
		{"BYTEARRAY8 of 2^63", "\x80\x05\x96" + u64(1<<63) + ".", pickle.ErrTooLarge, ""},
		{"BINUNICODE8 of 2^50", "\x80\x04\x8d" + u64(1<<50) + ".", pickle.ErrTooLarge, ""},
		{"FRAME of 2^62", "\x80\x04\x95" + u64(1<<62) + "N.", pickle.ErrTooLarge, ""},
		{"BINBYTES past the end", "\x80\x03B" + u32(1<<20) + "abc", pickle.ErrTruncated, ""},
		{"LONG4 of 2^30 bytes", "\x80\x02\x8b" + u32(1<<30) + ".", pickle.ErrTooLarge, "integer of"},
		{"GLOBAL line too long", "\x80\x02c" + strings.Repeat("a", 5000) + "\nb\n.", pickle.ErrTooLarge, "text argument"},
		{"protocol 0 text", "Vabc\n.", pickle.ErrCorrupt, "protocol 0"},
		{"protocol 6", "\x80\x06N.", pickle.ErrCorrupt, "protocol 6"},
		{"opcode 0xff", "\x80\x04\xff.", pickle.ErrCorrupt, "unknown opcode"},
		{"persistent id", "\x80\x04K\x01Q.", pickle.ErrCorrupt, "persistent ids"},
		{"out-of-band buffer", "\x80\x05\x97.", pickle.ErrCorrupt, "out-of-band"},
		{"extension code", "\x80\x02\x82\x01.", pickle.ErrCorrupt, "extension"},
		{"odd DICT (gopickle panics)", "\x80\x02(K\x01d.", pickle.ErrCorrupt, "unpickler failed"},
		{"STOP on an empty stack", "\x80\x04.", pickle.ErrCorrupt, "stack is empty"},
		{"LONG1 of zero bytes is 0", "\x80\x02\x8a\x00.", pickle.ErrLayout, "holds a int"},
		{"_reconstruct of a non-ndarray", "\x80\x04\x8c\x15numpy.core.multiarray\x8c\x0c_reconstruct\x93N)C\x01b\x87R.", pickle.ErrCorrupt, "not numpy.ndarray"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pickle.NewFile(strings.NewReader(tc.data), int64(len(tc.data)))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not say %q", err, tc.msg)
			}
			var ce *pickle.ClassError
			if errors.Is(err, pickle.ErrUnknownClass) && !errors.As(err, &ce) {
				t.Fatalf("%v: no ClassError", err)
			}

			path := filepath.Join(t.TempDir(), "x.pkl")
			if err := os.WriteFile(path, []byte(tc.data), 0o644); err != nil {
				t.Fatal(err)
			}
			n := 0
			err = pickle.Read(context.Background(), path, func(ingest.Item) error { n++; return nil })
			if !errors.Is(err, tc.want) || n != 0 {
				t.Fatalf("Read: %d items, error %v", n, err)
			}
		})
	}
}

// TestHugeLengthsAllocateNothing checks that declared lengths are refused
// before anything of their size is allocated.
func TestHugeLengthsAllocateNothing(t *testing.T) {
	for _, data := range []string{
		"\x80\x04\x8e" + u64(1<<39) + "x.",
		"\x80\x04\x95" + u64(1<<39) + "N.",
		"\x80\x03B" + u32(1<<31) + "x.",
	} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := pickle.NewFile(strings.NewReader(data), int64(len(data)))
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("%q accepted", data)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
			t.Errorf("%q: allocated %d bytes before failing", data[:3], d)
		}
	}
}

// TestUnknownClassNeverRuns checks that the os.system fixture names the
// global and that nothing was run (the pickle would print through a shell).
func TestUnknownClassNeverRuns(t *testing.T) {
	_, err := pickle.Open("testdata/broken_unknown_class.pkl")
	var ce *pickle.ClassError
	if !errors.As(err, &ce) || ce.Module != "posix" || ce.Name != "system" {
		t.Fatalf("got %v, want ClassError posix.system", err)
	}
}

// TestContextCancel checks that Read stops when its context ends.
func TestContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	err := pickle.Read(ctx, "testdata/p4_f8.pkl", func(ingest.Item) error {
		n++
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) || n != 1 {
		t.Fatalf("%d items, error %v", n, err)
	}
	stop := errors.New("stop")
	err = pickle.Read(context.Background(), "testdata/p4_f8.pkl", func(ingest.Item) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("emit error not returned: %v", err)
	}
}

// TestRowOutOfRange checks Row's bounds.
func TestRowOutOfRange(t *testing.T) {
	b, err := os.ReadFile("testdata/p3_f8.pkl")
	if err != nil {
		t.Fatal(err)
	}
	f, err := pickle.NewFile(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{-1, f.Len()} {
		if _, err := f.Row(i); err == nil {
			t.Errorf("row %d accepted", i)
		}
	}
}

// TestOpCostBoundsAllocation checks that the scan's cost charges bound what
// the unpickler really allocates for long runs of cheap opcodes, and that a
// stream of them stops with ErrTooLarge instead of growing the heap.
func TestOpCostBoundsAllocation(t *testing.T) {
	tests := []struct {
		rep string // repeated unit
		ops string // its opcodes
	}{
		{"(", "("},
		{"}", "}"},
		{"]", "]"},
		{"N", "N"},
		{")", ")"},
		{"\x8f", "\x8f"},
		{"\x88\x94", "\x88\x94"},
		{"K\x01\x94", "K\x94"},
		{"(\x91", "(\x91"},
		{"N\x85", "N\x85"},
		{"NN\x86\x94", "NN\x86\x94"},
		{"(NNNNl", "(NNNNl"},
		{"C\x01x", "C"},
		{"\x8c\x03abc", "\x8c"},
	}
	for _, tc := range tests {
		const n = 50000
		data := "\x80\x04" + strings.Repeat(tc.rep, n)
		charged := int64(0)
		for i := range len(tc.ops) {
			charged += pickle.OpCost(tc.ops[i])
		}
		if tc.ops == "C" {
			charged += 128 // span
		}
		if tc.ops == "\x8c" {
			charged += 3 // payload
		}
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		_, err := pickle.NewFile(strings.NewReader(data), int64(len(data)))
		runtime.ReadMemStats(&b)
		if !errors.Is(err, pickle.ErrTruncated) {
			t.Fatalf("%q: %v", tc.rep, err)
		}
		// Minus the fixed cost of a scan (window, memo map, ...).
		per := (int64(b.TotalAlloc-a.TotalAlloc) - 256<<10) / n
		if per > charged {
			t.Errorf("%q allocates %d B per repetition, charged %d", tc.rep, per, charged)
		}
	}
	// A megabyte of MARKs costs more than the budget.
	data := "\x80\x04" + strings.Repeat("(", 1<<20) + "."
	if _, err := pickle.NewFile(strings.NewReader(data), int64(len(data))); !errors.Is(err, pickle.ErrTooLarge) {
		t.Fatalf("1 MiB of MARKs: %v", err)
	}
}
