package preprocess_test

import (
	"context"
	"testing"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/preprocess"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

func cropCard(name string) *model.Card {
	c := card(name, 128)
	c.Task, c.Detector = model.TaskCrop, "a"
	c.Cascade = &model.Cascade{Window: 128, DetectThreshold: 0.25, MaxCandidates: 8}
	return c
}

// TestCropModelInput checks a crop model selected on its own: a slice that
// fits in the window is sent whole at its native grid, centred with air
// around it in 128×128, with its placement; a larger one is sent as
// native HU with no tensor or placement; neither makes training copies.
func TestCropModelInput(t *testing.T) {
	ctx := context.Background()
	cs := cards{"c": cropCard("c"), "a": card("a", 256)}
	for _, tc := range []struct {
		rows, cols int
		want       *lungsegv1.Region
	}{
		{43, 60, &lungsegv1.Region{Y0: 42, X0: 34, Height: 43, Width: 60}},
		{109, 44, &lungsegv1.Region{Y0: 9, X0: 42, Height: 109, Width: 44}},
		{128, 128, &lungsegv1.Region{Y0: 0, X0: 0, Height: 128, Width: 128}},
		{129, 50, nil},
		{200, 300, nil},
	} {
		data, hu := slice(t, tc.rows, tc.cols, "c", "a")
		var r recorder
		st := &preprocess.Stage{Cards: cs, TrainCopies: 1}
		if err := st.Process(ctx, &stage.Msg{Data: data}, &r); err != nil {
			t.Fatal(err)
		}
		if len(r.fails) != 0 {
			t.Fatalf("%d×%d: fails %+v", tc.rows, tc.cols, r.fails)
		}
		var got *lungsegv1.ModelInput
		train := 0
		for _, o := range r.outs {
			if o.Subject == bus.TrainSubject("c") {
				t.Errorf("%d×%d: training copy for the crop model", tc.rows, tc.cols)
			}
			if o.Subject == bus.TrainSubject("a") {
				train++
			}
			if o.Subject == bus.ReadySubject("c") {
				got = &lungsegv1.ModelInput{}
				if err := proto.Unmarshal(o.Data, got); err != nil {
					t.Fatal(err)
				}
			}
		}
		if got == nil || train != 2 {
			t.Fatalf("%d×%d: no input for c among %d outputs (training copies of a: %d)", tc.rows, tc.cols, len(r.outs), train)
		}
		if got.Height != 128 || got.Width != 128 || got.Model != "c" {
			t.Errorf("%d×%d: input %s %d×%d", tc.rows, tc.cols, got.Model, got.Height, got.Width)
		}
		if tc.want == nil {
			if got.Placement != nil || len(got.Tensor) != 0 || string(got.NativeHu) != string(hu.EncodeInt16()) {
				t.Errorf("%d×%d: placement %v, tensor %d bytes, native HU %d bytes; want native HU only",
					tc.rows, tc.cols, got.Placement, len(got.Tensor), len(got.NativeHu))
			}
			continue
		}
		if !proto.Equal(got.Placement, tc.want) || len(got.NativeHu) != 0 {
			t.Fatalf("%d×%d: placement %v, want %v (native HU %d bytes)", tc.rows, tc.cols, got.Placement, tc.want, len(got.NativeHu))
		}
		win, err := imgx.DecodeFloat32(128*128, got.Tensor)
		if err != nil {
			t.Fatal(err)
		}
		norm := cs["c"].Normalisation
		y0, x0 := int(tc.want.Y0), int(tc.want.X0)
		at := func(y, x int) float32 { return win[(y0+y)*128+x0+x] }
		for y := 0; y < tc.rows; y++ {
			for c := 0; c < tc.cols; c++ {
				if w := norm.Apply(float64(hu.At(y, c))); at(y, c) != w {
					t.Fatalf("%d×%d: window (%d,%d) = %v, slice pixel normalised %v", tc.rows, tc.cols, y, c, at(y, c), w)
				}
			}
		}
		// Air around it: every window pixel outside the placement.
		air := norm.Apply(float64(imgx.AirHU))
		for i, v := range win {
			y, x := i/128-y0, i%128-x0
			if (y < 0 || y >= tc.rows || x < 0 || x >= tc.cols) && v != air {
				t.Fatalf("%d×%d: window pixel (%d,%d) outside the slice is %v, not air %v", tc.rows, tc.cols, i/128, i%128, v, air)
			}
		}
	}
}
