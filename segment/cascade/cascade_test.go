package cascade

import (
	"reflect"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
)

// grid builds a rows×cols map from rows of text: '.' is 0, a digit d is
// d/10.
func grid(lines ...string) ([]float32, int, int) {
	rows, cols := len(lines), len(lines[0])
	out := make([]float32, 0, rows*cols)
	for _, l := range lines {
		for _, ch := range l {
			v := float32(0)
			if ch >= '0' && ch <= '9' {
				v = float32(ch-'0') / 10
			}
			out = append(out, v)
		}
	}
	return out, rows, cols
}

func TestComponents(t *testing.T) {
	prob, rows, cols := grid(
		"3.....",
		".5..2.",
		"..7...",
		"....9.",
		"3...44",
	)
	got := Components(prob, rows, cols, 0.25)
	want := []Component{
		// The diagonal chain 3,5,7 is one component under 8-connectivity.
		{YMin: 0, XMin: 0, YMax: 2, XMax: 2, Peak: 0.7, Pixels: 3},
		// 0.2 is not above the threshold, so this starts at the 9.
		{YMin: 3, XMin: 4, YMax: 4, XMax: 5, Peak: 0.9, Pixels: 3},
		{YMin: 4, XMin: 0, YMax: 4, XMax: 0, Peak: 0.3, Pixels: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Components =\n%+v\nwant\n%+v", got, want)
	}
	// The threshold is strict.
	if got := Components(prob, rows, cols, 0.9); len(got) != 0 {
		t.Fatalf("threshold 0.9 gave %+v", got)
	}
}

func TestSelect(t *testing.T) {
	p := Params{Window: 20, MaxCandidates: 3} // boxes up to 4×4 get a window
	comps := []Component{
		{YMin: 10, XMin: 10, YMax: 11, XMax: 11, Peak: 0.5},  // a: tie with b, c
		{YMin: 2, XMin: 30, YMax: 3, XMax: 31, Peak: 0.5},    // b: tie, top row 2
		{YMin: 2, XMin: 5, YMax: 5, XMax: 8, Peak: 0.5},      // c: tie, top row 2, left of b
		{YMin: 40, XMin: 40, YMax: 40, XMax: 44, Peak: 0.9},  // d: 5 wide > 20-16: skipped
		{YMin: 50, XMin: 50, YMax: 50, XMax: 50, Peak: 0.95}, // e: highest peak
	}
	got := Select(comps, p)
	// Order e, d, c, b, a; the cap keeps e, d, c; d is too wide.
	want := []Window{
		{Y0: 50 - 10, X0: 50 - 10, H: 20, W: 20},
		{Y0: (2+5)/2 - 10, X0: (5+8)/2 - 10, H: 20, W: 20},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Select = %+v, want %+v", got, want)
	}
	p.MaxCandidates = 8
	if got := Select(comps, p); len(got) != 4 || got[2] != WindowOf(comps[1], 20) || got[3] != WindowOf(comps[0], 20) {
		t.Fatalf("uncapped Select = %+v", got)
	}
	// A box exactly Window-Margin on a side still gets a window.
	edge := []Component{{YMin: 0, XMin: 0, YMax: 3, XMax: 3, Peak: 1}}
	if got := Select(edge, p); len(got) != 1 {
		t.Fatalf("4×4 box with window 20: %+v", got)
	}
}

func TestWindowOfIsNotClamped(t *testing.T) {
	for _, tc := range []struct {
		c    Component
		want Window
	}{
		{Component{YMin: 3, XMin: 4, YMax: 6, XMax: 4}, Window{Y0: 4 - 64, X0: 4 - 64, H: 128, W: 128}},
		{Component{YMin: 0, XMin: 500, YMax: 1, XMax: 511}, Window{Y0: 0 - 64, X0: 505 - 64, H: 128, W: 128}},
	} {
		if got := WindowOf(tc.c, 128); got != tc.want {
			t.Errorf("WindowOf(%+v) = %+v, want %+v", tc.c, got, tc.want)
		}
	}
	// Odd window: top-left is centre - window/2 in integer division.
	if got := WindowOf(Component{YMin: 5, XMin: 5, YMax: 5, XMax: 5}, 21); got.Y0 != -5 || got.X0 != -5 {
		t.Errorf("odd window: %+v", got)
	}
}

func TestCropReadsAirOutside(t *testing.T) {
	hu := imgx.NewHU(3, 4)
	for i := range hu.Pix {
		hu.Pix[i] = int16(100 * i)
	}
	norm := model.Normalisation{Kind: "window", Center: 0, Width: 4096} // HU -2048..2048 → 0..1
	got := Crop(hu, Window{Y0: -1, X0: 2, H: 3, W: 3}, norm)
	n := func(h float64) float32 { return norm.Apply(h) }
	air := n(-1024)
	want := []float32{
		air, air, air,
		n(200), n(300), air,
		n(600), n(700), air,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Crop = %v, want %v", got, want)
	}
	if air != 0.25 {
		t.Fatalf("-1024 HU normalised to %v, want 0.25", air)
	}
}

func TestMerge(t *testing.T) {
	native, rows, cols := grid(
		"9999",
		"9119",
		"3333",
	)
	thr := float32(0.5)
	wins := []Window{
		{Y0: -1, X0: -1, H: 2, W: 3}, // covers (0,0),(0,1)
		{Y0: 0, X0: 1, H: 2, W: 2},   // covers (0,1),(0,2),(1,1),(1,2); overlaps at (0,1)
	}
	probs := [][]float32{
		{0.1, 0.1, 0.1, 0.1, 0.6, 0.2},
		{0.7, 0.05, 0.0, 0.8},
	}
	got, err := Merge(native, rows, cols, wins, probs, thr)
	if err != nil {
		t.Fatal(err)
	}
	want := []float32{
		0.6, 0.7, 0.05, 0.5, // (0,1): max(0.2, 0.7); (0,3) uncovered: min(0.9, 0.5)
		0.5, 0, 0.8, 0.5, // (1,0) uncovered; (1,1) window's 0 replaces the detector's 0.1
		0.3, 0.3, 0.3, 0.3, // uncovered and under the cap: the detector's value
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Merge =\n%v\nwant\n%v", got, want)
	}
	if native[0] != 0.9 {
		t.Fatal("Merge changed its input")
	}
	m := Mask(got, rows, cols, thr)
	wantMask := []uint8{1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0}
	if !reflect.DeepEqual(m.Pix, wantMask) {
		t.Fatalf("Mask = %v, want %v (capped pixels equal the threshold and stay out)", m.Pix, wantMask)
	}
}

func TestMergeWithoutWindowsIsEmpty(t *testing.T) {
	native, rows, cols := grid("99", "95")
	got, err := Merge(native, rows, cols, nil, nil, 0.4)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if v != 0.4 {
			t.Fatalf("pixel %d = %v, want the cap 0.4", i, v)
		}
	}
	if n := Mask(got, rows, cols, 0.4).Count(); n != 0 {
		t.Fatalf("%d mask pixels without a window", n)
	}
}

func TestMergeRejects(t *testing.T) {
	native := make([]float32, 4)
	for name, tc := range map[string]struct {
		wins  []Window
		probs [][]float32
	}{
		"count":      {[]Window{{H: 1, W: 1}}, nil},
		"short prob": {[]Window{{H: 2, W: 2}}, [][]float32{{1, 2, 3}}},
		"empty":      {[]Window{{H: 0, W: 2}}, [][]float32{{}}},
	} {
		if _, err := Merge(native, 2, 2, tc.wins, tc.probs, 0.5); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Merge(native, 3, 2, nil, nil, 0.5); err == nil {
		t.Error("wrong native size accepted")
	}
}

func TestPlan(t *testing.T) {
	native, rows, cols := grid(
		"......",
		".88...",
		"......",
		"....6.",
	)
	p := Params{Window: 18, DetectThreshold: 0.25, MaxCandidates: 1}
	got := Plan(native, rows, cols, p)
	want := []Window{{Y0: 1 - 9, X0: (1+2)/2 - 9, H: 18, W: 18}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Plan = %+v, want %+v", got, want)
	}
}

func TestParamsOf(t *testing.T) {
	c := &model.Card{Name: "c", Task: model.TaskCrop, Threshold: 0.4,
		Cascade: &model.Cascade{Window: 128, DetectThreshold: 0.25, MaxCandidates: 8}}
	p, err := ParamsOf(c)
	if err != nil || p != (Params{Window: 128, DetectThreshold: 0.25, MaxCandidates: 8, Threshold: 0.4}) {
		t.Fatalf("ParamsOf = %+v, %v", p, err)
	}
	if _, err := ParamsOf(&model.Card{Name: "s"}); err == nil {
		t.Fatal("whole-slice card accepted")
	}
}

func TestPlanIn(t *testing.T) {
	native, rows, cols := grid(
		"......",
		".88...",
		"......",
		"....6.",
	)
	p := Params{Window: 18, DetectThreshold: 0.25, MaxCandidates: 8}
	if got, want := PlanIn(native, rows, cols, p, nil), Plan(native, rows, cols, p); !reflect.DeepEqual(got, want) || len(got) != 2 {
		t.Fatalf("PlanIn without field = %+v, want Plan's %+v (2 windows)", got, want)
	}
	// The field holds only the lower right candidate (and its row).
	field := imgx.NewMask(rows, cols)
	for x := 0; x < cols; x++ {
		field.Pix[3*cols+x] = 1
	}
	before := append([]float32(nil), native...)
	got := PlanIn(native, rows, cols, p, field)
	want := []Window{{Y0: 3 - 9, X0: 4 - 9, H: 18, W: 18}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("PlanIn = %+v, want %+v", got, want)
	}
	if !reflect.DeepEqual(native, before) {
		t.Fatal("PlanIn changed the native map")
	}
	if got := PlanIn(native, rows, cols, p, imgx.NewMask(rows, cols)); len(got) != 0 {
		t.Fatalf("empty field: windows %+v", got)
	}
}

func TestBoxOf(t *testing.T) {
	w := Window{Y0: -10, X0: 100, H: 128, W: 128}
	// a 10×60 component: the short side grows to MinBox about its centre, the long one by the margin
	c := Component{YMin: 40, XMin: 130, YMax: 49, XMax: 189}
	got := BoxOf(c, w, 16)
	want := Rect{Y0: 40 - 17, X0: 130 - 16, H: MinBox, W: 60 + 32}
	if got != want {
		t.Fatalf("BoxOf = %+v, want %+v", got, want)
	}
	// near the window's edge the box is cut to the window
	c = Component{YMin: -5, XMin: 200, YMax: 20, XMax: 220}
	got = BoxOf(c, w, 16)
	if got.Y0 != -10 || got.Y0+got.H != 20+16+1 || got.X0+got.W != 228 {
		t.Fatalf("BoxOf near the edge = %+v, want rows -10..36, columns to 227", got)
	}
}

func TestSelectBoxesOnlyWithAMargin(t *testing.T) {
	c := Component{YMin: 50, XMin: 60, YMax: 59, XMax: 69, Peak: 0.9, Pixels: 100}
	p := Params{Window: 128, DetectThreshold: 0.25, MaxCandidates: 8, Threshold: 0.5}
	if w := Select([]Component{c}, p); len(w) != 1 || !w[0].Box.Empty() {
		t.Fatalf("without a margin: %+v, want one window without a box", w)
	}
	p.BoxMargin = 16
	w := Select([]Component{c}, p)
	if len(w) != 1 || w[0].Box != BoxOf(c, w[0], 16) || w[0].Box.Empty() {
		t.Fatalf("with margin 16: %+v, want its BoxOf", w)
	}
	if (w[0] != Window{Y0: 54 - 64, X0: 64 - 64, H: 128, W: 128, Box: w[0].Box}) {
		t.Fatalf("the window itself moved: %+v", w[0])
	}
}

func TestCropAndMergeKeepToTheBox(t *testing.T) {
	hu := imgx.NewHU(4, 4)
	for i := range hu.Pix {
		hu.Pix[i] = int16(100 * i)
	}
	norm := model.Normalisation{Kind: "window", Center: 0, Width: 4096}
	n := func(h float64) float32 { return norm.Apply(h) }
	air := n(-1024)
	win := Window{Y0: 0, X0: 0, H: 3, W: 3, Box: Rect{Y0: 1, X0: 1, H: 2, W: 2}}
	got := Crop(hu, win, norm)
	want := []float32{
		air, air, air,
		air, n(500), n(600),
		air, n(900), n(1000),
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Crop = %v, want %v (air outside the box)", got, want)
	}
	native := make([]float32, 16)
	for i := range native {
		native[i] = 0.9
	}
	probs := [][]float32{{0.8, 0.8, 0.8, 0.8, 0.1, 0.7, 0.8, 0.6, 0.2}}
	ref, err := Merge(native, 4, 4, []Window{win}, probs, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	wantRef := []float32{
		0.5, 0.5, 0.5, 0.5, // outside the box: not covered, capped, whatever the window said
		0.5, 0.1, 0.7, 0.5,
		0.5, 0.6, 0.2, 0.5,
		0.5, 0.5, 0.5, 0.5,
	}
	if !reflect.DeepEqual(ref, wantRef) {
		t.Fatalf("Merge =\n%v\nwant\n%v", ref, wantRef)
	}
}

func TestParamsOfBoxMargin(t *testing.T) {
	c := &model.Card{Name: "m-crop", Task: model.TaskCrop, Threshold: 0.4,
		Cascade: &model.Cascade{Window: 128, DetectThreshold: 0.25, MaxCandidates: 8, BoxMargin: 16}}
	p, err := ParamsOf(c)
	if err != nil || p.BoxMargin != 16 {
		t.Fatalf("ParamsOf = %+v, %v; want BoxMargin 16", p, err)
	}
}
