package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/rs/zerolog"
)

func TestMain(m *testing.M) {
	if err := ortlib.Init(context.Background(), zerolog.Nop()); err != nil {
		fmt.Fprintln(os.Stderr, "loading ONNX Runtime:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// benchSet writes n phantom slices as DICOM and as a pickle.
func benchSet(b testing.TB, n int) (files []string, pkl string, slices []phantom.Slice) {
	b.Helper()
	dir := b.TempDir()
	slices = phantom.Generate(3, n, phantom.Options{Series: true})
	if err := phantom.WriteDICOM(dir, slices); err != nil {
		b.Fatal(err)
	}
	for i := range slices {
		files = append(files, filepath.Join(dir, slices[i].Name()+".dcm"))
	}
	pkl = filepath.Join(dir, "s.pkl")
	if err := phantom.WritePKL(pkl, slices); err != nil {
		b.Fatal(err)
	}
	return files, pkl, slices
}

// BenchmarkDICOMRead decodes one 512×512 phantom CT file per op: with one
// dicomio.Decoder across the ops (the ingest stage's read) and with
// dicomio.ReadFile (fresh memory per file).
func BenchmarkDICOMRead(b *testing.B) {
	files, _, _ := benchSet(b, 4)
	for _, tc := range []struct {
		name string
		d    *dicomio.Decoder
	}{{"decoder", new(dicomio.Decoder)}, {"fresh", nil}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(fileSize(files...) / int64(len(files)))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := goDICOM(tc.d, files[i%len(files):i%len(files)+1]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPickleRead decodes a 4-row Mendeley-layout pickle per op.
func BenchmarkPickleRead(b *testing.B) {
	_, pkl, _ := benchSet(b, 4)
	b.SetBytes(fileSize(pkl))
	b.ReportAllocs()
	ctx := context.Background()
	for b.Loop() {
		if err := goPickle(ctx, pkl, 4); err != nil {
			b.Fatal(err)
		}
	}
}

func tinySession(tb testing.TB) (*model.Card, *infer.Session) {
	tb.Helper()
	card, err := model.LoadCard(filepath.Join(testenv.RepoRoot(tb), "segment", "testdata", "tiny"))
	if err != nil {
		tb.Fatal(err)
	}
	sess, err := infer.Open(card, infer.Options{}, zerolog.Nop())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sess.Close() })
	return card, sess
}

// BenchmarkBareLoop runs the bare per-slice loop on the tiny model: its
// cost beyond Session.Run is what the pipeline must add little to.
func BenchmarkBareLoop(b *testing.B) {
	card, sess := tinySession(b)
	_, _, slices := benchSet(b, 2)
	for b.Loop() {
		if _, _, err := bareLoop(sess, card, slices[:1]); err != nil {
			b.Fatal(err)
		}
	}
}
