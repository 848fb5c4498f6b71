package segment_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/segment"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/lungseg/lungseg/segment/verify"
	"github.com/rs/zerolog"
)

// BenchmarkTile is the cost of a crop model run alone over a 512² slice
// (the shipped resnet50-unet-small-crop, one intra-op thread): windows
// every 96 px (25 windows, the stride before 2026-12-03) as the baseline,
// and every segment.TileStride px (49 windows), in the same run; the
// ratio of the two ns/op is what the Gaussian tiling costs. On a second,
// lung-like slice with 40 soft-tissue discs, "+verify" adds the card's
// verifier (segment/verify) to the tiling: its ratio to the plain tiling
// of the same slice is the verifier's cost, with the components it judged
// per slice reported beside it.
func BenchmarkTile(b *testing.B) {
	reg, err := model.OpenRegistry(filepath.Join(testenv.RepoRoot(b), "models"))
	if err != nil {
		b.Fatal(err)
	}
	card, err := reg.Get("resnet50-unet-small-crop")
	if err != nil {
		b.Fatal(err)
	}
	sess, err := infer.Open(card, infer.Options{IntraOpThreads: 1}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	hu := imgx.NewHU(512, 512)
	for i := range hu.Pix {
		hu.Pix[i] = int16((i*7919)%1400 - 1000)
	}
	// the verifier's benchmark needs components: a lung of −850 HU with 40
	// soft-tissue discs of radius 2–7 px (nodule- and vessel-sized)
	lung := imgx.NewHU(512, 512)
	for i := range lung.Pix {
		lung.Pix[i] = int16(-850 + (i*7919)%60)
	}
	for k := range 40 {
		cy, cx, r := 40+(k*97)%430, 40+(k*193)%430, 2+k%6
		for y := cy - r; y <= cy+r; y++ {
			for x := cx - r; x <= cx+r; x++ {
				if (y-cy)*(y-cy)+(x-cx)*(x-cx) <= r*r {
					lung.Pix[y*512+x] = 30
				}
			}
		}
	}
	for _, stride := range []int{96, segment.TileStride} {
		b.Run(fmt.Sprintf("stride%d", stride), func(b *testing.B) {
			for range b.N {
				if _, err := segment.Tile(sess, card, hu, stride, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	if card.Verifier == nil {
		return
	}
	cl, err := infer.OpenClassifier(card, infer.Options{IntraOpThreads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	b.Run(fmt.Sprintf("lung/stride%d", segment.TileStride), func(b *testing.B) {
		for range b.N {
			if _, err := segment.Tile(sess, card, lung, segment.TileStride, false); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run(fmt.Sprintf("lung/stride%d+verify", segment.TileStride), func(b *testing.B) {
		comps := 0
		for range b.N {
			prob, err := segment.Tile(sess, card, lung, segment.TileStride, false)
			if err != nil {
				b.Fatal(err)
			}
			res, err := verify.Apply(cl, card.Verifier, lung, prob, float32(card.Threshold), nil)
			if err != nil {
				b.Fatal(err)
			}
			comps += res.Components
		}
		b.ReportMetric(float64(comps)/float64(b.N), "components/op")
	})
}
