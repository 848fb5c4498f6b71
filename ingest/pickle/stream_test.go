package pickle_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pickle"
)

// TestStreamingMemory writes a 512×512 frame of many rows with WriteFunc
// (never holding more than one row) and reads it with Read, sampling the
// heap after every row: the peak must stay near one row's worth, far
// below the file size.
func TestStreamingMemory(t *testing.T) {
	n := 200 // ~880 MB on disk
	if testing.Short() {
		n = 30
	}
	const side = 512
	path := filepath.Join(t.TempDir(), "big.pkl")
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// One template row, relabelled per i: generating 512×512 noise 800
	// times would dominate the test's time.
	tmpl := phantomRow(9, side, side, true)
	err = pickle.WriteFunc(fh, n, func(i int) (*pickle.Row, error) {
		r := tmpl
		r.Label = []string{"LR2", "LR3", "LR4A", "LR4B"}[i%4]
		return &r, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	wantCount := tmpl.Mask.Count()
	tmpl = pickle.Row{} // let it go before measuring

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc

	// The structure Open keeps: a few hundred bytes per cell.
	f, err := pickle.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	structure := int64(ms.HeapAlloc) - int64(base)
	f.Close()

	peak := uint64(0)
	rows := 0
	err = pickle.Read(context.Background(), path, func(it ingest.Item) error {
		if it.Err != nil {
			return it.Err
		}
		if it.HU.Rows != side || it.HU.Cols != side || it.Mask.Count() != wantCount {
			t.Fatalf("row %d: %d×%d", rows, it.HU.Rows, it.HU.Cols)
		}
		rows++
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapAlloc)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if rows != n {
		t.Fatalf("%d rows read, wrote %d", rows, n)
	}
	growth := int64(peak) - int64(base)
	// One row: 2 MiB of raw float64 bytes + 2 MiB of floats + 0.5 MiB of
	// int16 + 0.25 MiB of mask, doubled for garbage the GC has not yet
	// reclaimed; 64 MiB is loose on purpose.
	const bound = 64 << 20
	t.Logf("%d rows of %d×%d, file %.0f MiB: structure after Open %.1f KiB (%.0f B/cell), peak heap growth while reading %.1f MiB",
		n, side, side, float64(st.Size())/(1<<20), float64(structure)/1024, float64(structure)/float64(4*n), float64(growth)/(1<<20))
	if growth > bound {
		t.Errorf("heap grew by %d MiB reading a %d MiB file; want under %d MiB", growth>>20, st.Size()>>20, bound>>20)
	}
	if st.Size() < 4*bound && !testing.Short() {
		t.Errorf("file of %d MiB too small for the bound to mean anything", st.Size()>>20)
	}
}

// FuzzRead feeds arbitrary bytes to the reader: it must never panic or
// allocate beyond what the input justifies, every error must be one of the
// package's sentinels, and every row must give an item or a row error.
func FuzzRead(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.pkl")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err == nil && len(b) <= 64<<10 {
			f.Add(b)
		}
	}
	var small bytes.Buffer
	if err := pickle.Write(&small, []pickle.Row{phantomRow(1, 3, 4, true), phantomRow(2, 2, 2, false)}); err != nil {
		f.Fatal(err)
	}
	f.Add(small.Bytes())
	f.Add([]byte("\x80\x02(K\x01d."))
	f.Add([]byte("\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00N."))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		pf, err := pickle.NewFile(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("error outside the sentinels: %v", err)
			}
			return
		}
		for i := range pf.Len() {
			it := pf.Item(i)
			if it.Meta == nil || it.Meta.Id != pf.ID(i) {
				t.Fatalf("row %d: meta %v", i, it.Meta)
			}
			if it.Err == nil && (it.HU == nil || int(it.Meta.Rows) != it.HU.Rows || len(it.HU.Pix) != it.HU.Rows*it.HU.Cols) {
				t.Fatalf("row %d: item without consistent pixels", i)
			}
			if it.Err == nil && it.Mask != nil && (it.Mask.Rows != it.HU.Rows || it.Mask.Cols != it.HU.Cols) {
				t.Fatalf("row %d: mask and HU sizes differ", i)
			}
		}
	})
}

func isSentinel(err error) bool {
	for _, s := range []error{pickle.ErrTruncated, pickle.ErrTooLarge, pickle.ErrCorrupt, pickle.ErrLayout, pickle.ErrUnknownClass, pickle.ErrCell} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// BenchmarkRead reads a Go-written frame of 512×512 rows with Read.
func BenchmarkRead(b *testing.B) {
	const n = 8
	rows := make([]pickle.Row, n)
	for i := range rows {
		rows[i] = phantomRow(uint64(i), 512, 512, true)
	}
	path := writeRows(b, rows)
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	rows = nil
	b.SetBytes(st.Size())
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		got := 0
		err := pickle.Read(context.Background(), path, func(it ingest.Item) error {
			if it.Err != nil {
				return it.Err
			}
			got++
			return nil
		})
		if err != nil || got != n {
			b.Fatalf("%d rows, %v", got, err)
		}
	}
}
