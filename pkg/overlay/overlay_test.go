package overlay

import (
	"fmt"
	"image/color"
	"math"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// maskFrom reads a picture: '#' set, anything else unset.
func maskFrom(rows ...string) *imgx.Mask {
	m := imgx.NewMask(len(rows), len(rows[0]))
	for r, line := range rows {
		for c, ch := range line {
			if ch == '#' {
				m.Pix[r*m.Cols+c] = 1
			}
		}
	}
	return m
}

func picture(m *imgx.Mask) string {
	var b strings.Builder
	for r := 0; r < m.Rows; r++ {
		for c := 0; c < m.Cols; c++ {
			if m.Pix[r*m.Cols+c] != 0 {
				b.WriteByte('#')
			} else {
				b.WriteByte('.')
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func TestWindowGrey(t *testing.T) {
	for _, c := range []struct {
		hu   int16
		want uint8
	}{{-1350, 0}, {-2000, 0}, {150, 255}, {3000, 255}, {-600, 128}} {
		if got := LungWindow.Grey(c.hu); got != c.want {
			t.Errorf("Grey(%d) = %d, want %d", c.hu, got, c.want)
		}
	}
}

func TestOutlineAndDilate(t *testing.T) {
	m := maskFrom(
		".....",
		".###.",
		".###.",
		".###.",
		".....",
	)
	want := ".....\n.###.\n.#.#.\n.###.\n.....\n"
	if got := picture(Outline(m)); got != want {
		t.Errorf("outline\n%swant\n%s", got, want)
	}
	// A region touching the border is closed by the border.
	full := maskFrom("###", "###", "###")
	if got := picture(Outline(full)); got != "###\n#.#\n###\n" {
		t.Errorf("border outline\n%s", got)
	}
	dot := maskFrom(".....", ".....", "..#..", ".....", ".....")
	if got := picture(Dilate(dot, 1)); got != ".....\n.###.\n.###.\n.###.\n.....\n" {
		t.Errorf("dilate\n%s", got)
	}
}

func TestRegions(t *testing.T) {
	m := maskFrom(
		"##....",
		"##..#.",
		"....##",
		"#.....",
	)
	rs := Regions(m)
	if len(rs) != 3 {
		t.Fatalf("%d regions, want 3: %+v", len(rs), rs)
	}
	// The diagonal pair joins (8-neighbourhood); the 2×2 block comes first
	// (ties by position).
	if rs[0].Pixels != 4 || rs[0].MinRow != 0 || rs[0].MinCol != 0 || rs[0].MaxRow != 1 || rs[0].MaxCol != 1 {
		t.Errorf("first region %+v", rs[0])
	}
	if rs[0].Row != 0.5 || rs[0].Col != 0.5 {
		t.Errorf("centroid %v,%v", rs[0].Row, rs[0].Col)
	}
	if rs[1].Pixels != 3 || rs[1].MinCol != 4 || rs[1].MaxCol != 5 {
		t.Errorf("second region %+v", rs[1])
	}
	if rs[2].Pixels != 1 {
		t.Errorf("third region %+v", rs[2])
	}
	// A disc of area π·(5 mm)² has a 10 mm diameter.
	r := Region{Pixels: int(math.Round(math.Pi * 25 / 0.25))}
	if d := r.DiameterMm(0.5, 0.5); math.Abs(d-10) > 0.02 {
		t.Errorf("diameter %v, want 10", d)
	}
}

func TestRenderScalesAndDrawsLayers(t *testing.T) {
	hu := imgx.NewHU(8, 16)
	for i := range hu.Pix {
		hu.Pix[i] = -1400 // below the lung window: black
	}
	for i := range hu.Pix[:16] {
		hu.Pix[i] = 200 // first row white
	}
	truth := imgx.NewMask(8, 16)
	pred := imgx.NewMask(8, 16)
	for r := 2; r < 6; r++ {
		for c := 2; c < 6; c++ {
			truth.Pix[r*16+c] = 1
		}
		for c := 9; c < 14; c++ {
			pred.Pix[r*16+c] = 1
		}
	}
	red := ModelColor(0)
	img, err := Render(hu, LungWindow, 32, []Layer{{Mask: truth, Color: TruthColor}, {Mask: pred, Color: red, Thickness: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 32 || b.Dy() != 16 {
		t.Fatalf("size %v, want 32×16", b)
	}
	at := func(x, y int) color.RGBA { return img.RGBAAt(x, y) }
	if c := at(0, 0); c != (color.RGBA{255, 255, 255, 255}) {
		t.Errorf("top-left %v, want white", c)
	}
	if c := at(31, 15); c != (color.RGBA{0, 0, 0, 255}) {
		t.Errorf("bottom-right %v, want black", c)
	}
	// The truth square covers output pixels 4..11 in both axes: its edge
	// is green, its inside grey-black.
	if c := at(4, 4); c != TruthColor {
		t.Errorf("truth corner %v, want green", c)
	}
	if c := at(7, 7); c != (color.RGBA{0, 0, 0, 255}) {
		t.Errorf("truth inside %v, want black", c)
	}
	// The prediction spans output columns 18..27; thickness 2 colours
	// one pixel outside it too.
	if c := at(18, 6); c != red {
		t.Errorf("pred edge %v, want red", c)
	}
	if c := at(17, 6); c != red {
		t.Errorf("pred thick edge %v, want red", c)
	}
	if c := at(22, 7); c != (color.RGBA{0, 0, 0, 255}) {
		t.Errorf("pred inside %v, want black", c)
	}
	count := map[color.RGBA]int{}
	for y := 0; y < 16; y++ {
		for x := 0; x < 32; x++ {
			count[at(x, y)]++
		}
	}
	if count[TruthColor] != 28 { // 8×8 square: 64 - 36 inside
		t.Errorf("%d green pixels, want 28", count[TruthColor])
	}
	if _, err := Render(hu, LungWindow, 0, []Layer{{Mask: imgx.NewMask(4, 4)}}); err == nil {
		t.Error("mismatched layer accepted")
	}
	native, err := Render(hu, LungWindow, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b := native.Bounds(); b.Dx() != 16 || b.Dy() != 8 {
		t.Errorf("native size %v", b)
	}
}

func TestPaletteDistinct(t *testing.T) {
	seen := map[color.RGBA]bool{TruthColor: true}
	for i := 0; i < len(palette); i++ {
		c := ModelColor(i)
		if seen[c] {
			t.Errorf("colour %d %v repeats", i, c)
		}
		seen[c] = true
		if c.R == c.G && c.G == c.B {
			t.Errorf("colour %d is grey", i)
		}
	}
	if ModelColor(len(palette)) != ModelColor(0) {
		t.Error("palette does not cycle")
	}
	if Hex(TruthColor) != "#00ff00" {
		t.Errorf("Hex = %s", Hex(TruthColor))
	}
}

func TestCoincidingOutlinesAlternate(t *testing.T) {
	hu := imgx.NewHU(12, 12)
	m := imgx.NewMask(12, 12)
	for r := 0; r < 12; r++ {
		for c := 0; c < 12; c++ {
			m.Pix[r*12+c] = 1
		}
	}
	a, b := ModelColor(0), ModelColor(1)
	img, err := Render(hu, LungWindow, 0, []Layer{{Mask: m, Color: a}, {Mask: m, Color: b}})
	if err != nil {
		t.Fatal(err)
	}
	// Along the top edge, dashes of DashLength: a a a b b b a a a b b b.
	var got strings.Builder
	for x := 0; x < 12; x++ {
		switch img.RGBAAt(x, 0) {
		case a:
			got.WriteByte('a')
		case b:
			got.WriteByte('b')
		default:
			got.WriteByte('?')
		}
	}
	if got.String() != "aaabbbaaabbb" {
		t.Errorf("top edge %s, want aaabbbaaabbb", got.String())
	}
}

func TestColorOfIsByName(t *testing.T) {
	shipped := []string{
		"resnet50-unet-small", "resnet50-unet-small+crop", "resnet50-unet-small-crop",
		"unetr-small", "unetr-small+crop", "unetr-small-crop",
		"swin-unet-small", "swin-unet-small+crop", "swin-unet-small-crop",
	}
	seen := map[color.RGBA]string{TruthColor: "truth"}
	for _, m := range shipped {
		c := ColorOf(m)
		if o, ok := seen[c]; ok {
			t.Errorf("%s and %s share %s", m, o, Hex(c))
		}
		seen[c] = m
	}
	if ColorOf("resnet50-unet") != ColorOf("resnet50-unet-small") || ColorOf("unetr+crop") != ColorOf("unetr-small+crop") {
		t.Error("full and compact models of one family differ")
	}
	// the same name, the same colour, whatever was asked before
	a := ColorOf("my-model-v2")
	for _, m := range []string{"x", "y", "z", "unetr-small"} {
		ColorOf(m)
	}
	if ColorOf("my-model-v2") != a {
		t.Error("colour of an unknown name changed")
	}
	for _, pair := range [][2]string{{"a", "b+tta"}, {"alpha", "beta"}} {
		if ColorOf(pair[0]) == ColorOf(pair[1]) {
			t.Errorf("the tests' models %s and %s share a colour", pair[0], pair[1])
		}
	}
	for i := 0; i < 500; i++ {
		c := ColorOf(fmt.Sprintf("model-%d", i))
		if c.G > 200 && c.R < 120 && c.B < 120 {
			t.Errorf("model-%d gets a truth-like green %s", i, Hex(c))
		}
	}
}
