package badinput

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/preprocess"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score"
	"google.golang.org/protobuf/proto"
)

// seed adds the protobuf fixtures that enter through via, and good
// messages, to a fuzz corpus.
func seed(f *testing.F, via string, good ...[]byte) {
	root := testenv.RepoRoot(f)
	for _, fx := range corpus {
		if fx.via != via {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, fx.path))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, g := range good {
		f.Add(g)
	}
}

// FuzzPreprocess decodes arbitrary bytes as a raw slice in the preprocess
// processor: it must return an error or valid model inputs, never panic or
// allocate beyond the size caps.
func FuzzPreprocess(f *testing.F) {
	root := testenv.RepoRoot(f)
	card := tinyCard(f, root)
	s := phantom.Generate(5, 1, phantom.Options{Rows: 16, Cols: 16})[0]
	good, _ := proto.Marshal(&lungsegv1.Slice{Meta: &lungsegv1.SliceMeta{Id: "g", Rows: 16, Cols: 16, Models: []string{"tiny"}},
		Hu: s.HU.EncodeInt16(), HasMask: true, MaskBits: s.Mask.PackBits()})
	seed(f, viaPreprocess, good)
	p := &preprocess.Stage{Cards: cards{"tiny": card}, Defaults: []string{"tiny"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > bus.MaxPayload {
			t.Skip("over the payload limit")
		}
		rec, err := process(t, p, data)
		if err != nil {
			return
		}
		for _, o := range rec.outs {
			var in lungsegv1.ModelInput
			if err := proto.Unmarshal(o.Data, &in); err != nil {
				t.Fatalf("emitted an undecodable input: %v", err)
			}
			if want := int(in.Channels * in.Height * in.Width * 4); len(in.Tensor) != want {
				t.Fatalf("tensor of %d bytes for %d×%d×%d", len(in.Tensor), in.Channels, in.Height, in.Width)
			}
		}
	})
}

// FuzzScore decodes arbitrary bytes as a model output in the score
// processor.
func FuzzScore(f *testing.F) {
	prob := make([]float32, 4*4)
	prob[5] = 0.9
	good, _ := proto.Marshal(&lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Id: "g", Rows: 8, Cols: 8}, Model: "tiny",
		Height: 4, Width: 4, Prob: imgx.EncodeFloat32(prob), Threshold: 0.5, HasMask: true, MaskBits: imgx.NewMask(8, 8).PackBits()})
	seed(f, viaScore, good)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > bus.MaxPayload {
			t.Skip("over the payload limit")
		}
		rec, err := process(t, score.Stage{}, data)
		if err != nil {
			return
		}
		if len(rec.outs) != 1 {
			t.Fatalf("%d scores for one output", len(rec.outs))
		}
		var s lungsegv1.Score
		if err := proto.Unmarshal(rec.outs[0].Data, &s); err != nil {
			t.Fatal(err)
		}
		if s.Dice < 0 || s.Dice > 1 || s.Iou < 0 || s.Iou > 1 {
			t.Fatalf("dice %v iou %v out of [0,1]", s.Dice, s.Iou)
		}
	})
}
