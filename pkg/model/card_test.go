package model_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/model"
)

func writeModel(t *testing.T, dir, name string, edit func(*model.Card)) {
	t.Helper()
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, model.ModelFile), []byte("onnx bytes of "+name), 0o644); err != nil {
		t.Fatal(err)
	}
	c := model.Card{Name: name, Architecture: "unet", Version: "1", Input: model.Shape{Channels: 1, Height: 256, Width: 256},
		Normalisation: model.Normalisation{Kind: "window", Center: -600, Width: 1500}, Threshold: 0.5, Output: "logits",
	}
	if edit != nil {
		edit(&c)
	}
	b, _ := json.Marshal(c)
	if err := os.WriteFile(filepath.Join(d, model.CardFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRegistryResolve(t *testing.T) {
	dir := t.TempDir()
	writeModel(t, dir, "b", nil)
	writeModel(t, dir, "a", nil)
	if err := os.MkdirAll(filepath.Join(dir, "not-a-model"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := model.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		in   []string
		want []string
		err  error
	}{
		{[]string{"all"}, []string{"a", "b"}, nil},
		{[]string{"b,a", "a"}, []string{"b", "a"}, nil},
		{[]string{"all", "all+tta"}, []string{"a", "b", "a+tta", "b+tta"}, nil},
		{[]string{"b+tta"}, []string{"b+tta"}, nil},
		{[]string{"c"}, nil, model.ErrUnknownModel},
		{[]string{"c+tta"}, nil, model.ErrUnknownModel},
	}
	for _, tc := range tests {
		got, err := r.Resolve(tc.in)
		if !errors.Is(err, tc.err) || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%v) = %v, %v; want %v, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestBadCards(t *testing.T) {
	tests := []struct {
		name string
		edit func(*model.Card)
		want string
	}{
		{"threshold", func(c *model.Card) { c.Threshold = 1.5 }, "threshold"},
		{"channels", func(c *model.Card) { c.Input.Channels = 3 }, "channels"},
		{"window", func(c *model.Card) { c.Normalisation.Width = 0 }, "width"},
		{"output", func(c *model.Card) { c.Output = "softmax" }, "output"},
		{"size", func(c *model.Card) { c.Input.Height = 100000 }, "size"},
		{"kind", func(c *model.Card) { c.Normalisation.Kind = "zscore" }, "kind"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeModel(t, dir, "m", tc.edit)
			_, err := model.OpenRegistry(dir)
			if !errors.Is(err, model.ErrBadCard) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrBadCard mentioning %q", err, tc.want)
			}
		})
	}
	dir := t.TempDir()
	writeModel(t, dir, "m", func(c *model.Card) { c.Name = "other" })
	if _, err := model.OpenRegistry(dir); !errors.Is(err, model.ErrBadCard) {
		t.Fatalf("folder/name mismatch: %v", err)
	}
}

func TestVerifyChecksum(t *testing.T) {
	dir := t.TempDir()
	writeModel(t, dir, "m", func(c *model.Card) { c.SHA256 = "0000" })
	c, err := model.LoadCard(filepath.Join(dir, "m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.VerifyChecksum(); !errors.Is(err, model.ErrChecksum) {
		t.Fatalf("wrong sum accepted: %v", err)
	}
	// sha256("onnx bytes of m")
	sum := sha256.Sum256([]byte("onnx bytes of m"))
	c.SHA256 = hex.EncodeToString(sum[:])
	if err := c.VerifyChecksum(); err != nil {
		t.Fatalf("right sum refused: %v", err)
	}
}

func TestNormalisation(t *testing.T) {
	n := model.Normalisation{Kind: "window", Center: -600, Width: 1500}
	for hu, want := range map[float64]float32{-1350: 0, -2000: 0, 150: 1, 3000: 1, -600: 0.5} {
		if got := n.Apply(hu); got != want {
			t.Errorf("Apply(%v) = %v, want %v", hu, got, want)
		}
	}
}

// cropCard makes c a crop model paired with detector.
func cropCard(detector string) func(*model.Card) {
	return func(c *model.Card) {
		c.Task, c.Detector = model.TaskCrop, detector
		c.Input.Height, c.Input.Width = 128, 128
		c.Cascade = &model.Cascade{Window: 128, DetectThreshold: 0.25, MaxCandidates: 8}
	}
}

func TestRegistryCascades(t *testing.T) {
	dir := t.TempDir()
	writeModel(t, dir, "b", nil)
	writeModel(t, dir, "a", nil)
	writeModel(t, dir, "a-crop", cropCard("a"))
	writeModel(t, dir, "orphan-crop", cropCard("gone")) // detector absent: runs alone, no cascade
	r, err := model.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Names(), []string{"a", "b"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Names = %v, want %v", got, want)
	}
	if got, want := r.AllNames(), []string{"a", "a-crop", "b", "orphan-crop"}; !reflect.DeepEqual(got, want) {
		t.Errorf("AllNames = %v, want %v", got, want)
	}
	if got, want := r.Cascades(), []string{"a+crop"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Cascades = %v, want %v", got, want)
	}
	if c, ok := r.Crop("a"); !ok || c.Name != "a-crop" {
		t.Errorf("Crop(a) = %v, %v", c, ok)
	}
	if _, ok := r.Crop("b"); ok {
		t.Error("Crop(b) found a crop model")
	}
	tests := []struct {
		in   []string
		want []string
		err  error
	}{
		{[]string{"all"}, []string{"a", "a-crop", "b", "orphan-crop", "a+crop"}, nil},
		{[]string{"all+tta"}, []string{"a+tta", "a-crop+tta", "b+tta", "orphan-crop+tta"}, nil},
		{[]string{"all+crop", "a"}, []string{"a+crop", "a"}, nil},
		{[]string{"a+crop,a+tta"}, []string{"a+crop", "a+tta"}, nil},
		{[]string{"b+crop"}, nil, model.ErrUnknownModel},
		{[]string{"a+crop+tta"}, nil, model.ErrUnknownModel},
		{[]string{"a+tta+crop"}, nil, model.ErrUnknownModel},
		// A crop model runs alone (padded or tiled), with or without TTA,
		// also when its detector is absent; it has no cascade of its own.
		{[]string{"a-crop", "orphan-crop,a-crop+tta"}, []string{"a-crop", "orphan-crop", "a-crop+tta"}, nil},
		{[]string{"a-crop+crop"}, nil, model.ErrUnknownModel},
		{[]string{"gone+crop"}, nil, model.ErrUnknownModel},
	}
	for _, tc := range tests {
		got, err := r.Resolve(tc.in)
		if !errors.Is(err, tc.err) || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%v) = %v, %v; want %v, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
	for sel, want := range map[string]struct {
		base      string
		tta, crop bool
	}{"a": {"a", false, false}, "a+tta": {"a", true, false}, "a+crop": {"a", false, true}} {
		b, tta := model.SplitVariant(sel)
		if b != want.base || tta != want.tta || model.IsCascade(sel) != want.crop {
			t.Errorf("%s: SplitVariant = %s, %v; IsCascade %v; want %+v", sel, b, tta, model.IsCascade(sel), want)
		}
	}
}

func TestRegistryRefusesTwoCropsOfOneDetector(t *testing.T) {
	dir := t.TempDir()
	writeModel(t, dir, "a", nil)
	writeModel(t, dir, "a-crop", cropCard("a"))
	writeModel(t, dir, "a-crop2", cropCard("a"))
	if _, err := model.OpenRegistry(dir); !errors.Is(err, model.ErrBadCard) || !strings.Contains(err.Error(), "a-crop and a-crop2") {
		t.Fatalf("got %v, want ErrBadCard naming both", err)
	}
}

// goodVerifier is a valid verifier section.
func goodVerifier() *model.Verifier {
	return &model.Verifier{File: "verifier.onnx", SHA256: strings.Repeat("0", 64), Patch: 32,
		Normalisation: model.Normalisation{Kind: "window", Center: -600, Width: 1500}, Threshold: 0.5}
}

// TestVerifierCard: a crop card with a valid verifier section loads, with
// the verifier's default input and output names and its path in the
// model's folder.
func TestVerifierCard(t *testing.T) {
	dir := t.TempDir()
	writeModel(t, dir, "det", nil)
	writeModel(t, dir, "m", func(c *model.Card) { cropCard("det")(c); c.Verifier = goodVerifier() })
	reg, err := model.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := reg.Get("m")
	if err != nil {
		t.Fatal(err)
	}
	v := c.Verifier
	if v == nil || v.InputName != "input" || v.OutputName != "logits" {
		t.Fatalf("verifier %+v, want input/logits names filled in", v)
	}
	if got, want := c.VerifierPath(), filepath.Join(dir, "m", "verifier.onnx"); got != want {
		t.Errorf("VerifierPath = %s, want %s", got, want)
	}
	if d, _ := reg.Get("det"); d.VerifierPath() != "" {
		t.Errorf("a card without a verifier has VerifierPath %q", d.VerifierPath())
	}
}

func TestBadCropCards(t *testing.T) {
	tests := []struct {
		name string
		edit func(*model.Card)
		want string
	}{
		{"task", func(c *model.Card) { c.Task = "detect" }, "task"},
		{"slice with cascade", func(c *model.Card) { c.Cascade = &model.Cascade{Window: 128} }, "detector and cascade"},
		{"no detector", func(c *model.Card) { cropCard("a")(c); c.Detector = "" }, "detector"},
		{"self detector", func(c *model.Card) { cropCard("m")(c) }, "detector"},
		{"no cascade", func(c *model.Card) { cropCard("a")(c); c.Cascade = nil }, "needs cascade"},
		{"small window", func(c *model.Card) {
			cropCard("a")(c)
			c.Cascade.Window, c.Input.Height, c.Input.Width = 16, 16, 16
		}, "cascade.window 16"},
		{"window vs input", func(c *model.Card) { cropCard("a")(c); c.Input.Width = 96 }, "differs from input"},
		{"detect threshold", func(c *model.Card) { cropCard("a")(c); c.Cascade.DetectThreshold = 1 }, "detect_threshold"},
		{"no candidates", func(c *model.Card) { cropCard("a")(c); c.Cascade.MaxCandidates = 0 }, "max_candidates"},
		{"too many candidates", func(c *model.Card) { cropCard("a")(c); c.Cascade.MaxCandidates = 9 }, "max_candidates 9 out of range (1..8"},
		{"negative box margin", func(c *model.Card) { cropCard("a")(c); c.Cascade.BoxMargin = -1 }, "box_margin -1 out of range (0..64)"},
		{"box margin past half the window", func(c *model.Card) { cropCard("a")(c); c.Cascade.BoxMargin = 65 }, "box_margin 65"},
		{"verifier on a whole-slice model", func(c *model.Card) { c.Verifier = goodVerifier() }, "verifier is for crop models only"},
		{"verifier file in another folder", func(c *model.Card) {
			cropCard("a")(c)
			c.Verifier = goodVerifier()
			c.Verifier.File = "../x.onnx"
		}, "verifier.file"},
		{"verifier file is the model", func(c *model.Card) {
			cropCard("a")(c)
			c.Verifier = goodVerifier()
			c.Verifier.File = model.ModelFile
		}, "verifier.file"},
		{"verifier sha256", func(c *model.Card) { cropCard("a")(c); c.Verifier = goodVerifier(); c.Verifier.SHA256 = "ab" }, "verifier.sha256"},
		{"verifier patch", func(c *model.Card) { cropCard("a")(c); c.Verifier = goodVerifier(); c.Verifier.Patch = 4 }, "verifier.patch 4"},
		{"verifier window", func(c *model.Card) {
			cropCard("a")(c)
			c.Verifier = goodVerifier()
			c.Verifier.Normalisation.Width = 0
		}, "verifier.normalisation"},
		{"verifier threshold", func(c *model.Card) { cropCard("a")(c); c.Verifier = goodVerifier(); c.Verifier.Threshold = 1 }, "verifier.threshold 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeModel(t, dir, "m", tc.edit)
			_, err := model.OpenRegistry(dir)
			if !errors.Is(err, model.ErrBadCard) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrBadCard mentioning %q", err, tc.want)
			}
		})
	}
}

// TestQuantizedLeftOutOfAll: int8 variants (cards with quantization) and
// their cascades are selected by name; "all", "all+tta" and "all+crop"
// leave them out; QuantizedOf finds a float model's variants.
func TestQuantizedLeftOutOfAll(t *testing.T) {
	dir := t.TempDir()
	q := func(from, detector string) func(*model.Card) {
		return func(c *model.Card) {
			if detector != "" {
				cropCard(detector)(c)
			}
			c.Quantization = &model.Quantization{Format: "QDQ"}
			c.Quantization.From.Name = from
		}
	}
	writeModel(t, dir, "a", nil)
	writeModel(t, dir, "a-crop", cropCard("a"))
	writeModel(t, dir, "a-int8", q("a", ""))
	writeModel(t, dir, "a-int8-crop", q("a-crop", "a-int8"))
	r, err := model.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want []string }{
		{[]string{"all"}, []string{"a", "a-crop", "a+crop"}},
		{[]string{"all+tta"}, []string{"a+tta", "a-crop+tta"}},
		{[]string{"all+crop"}, []string{"a+crop"}},
		{[]string{"a-int8+crop,a-int8,all+crop"}, []string{"a-int8+crop", "a-int8", "a+crop"}},
	} {
		got, err := r.Resolve(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Resolve(%v) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if got := r.QuantizedOf("a"); len(got) != 1 || got[0].Name != "a-int8" {
		t.Errorf("QuantizedOf(a) = %v", got)
	}
	if got := r.QuantizedOf("b"); len(got) != 0 {
		t.Errorf("QuantizedOf(b) = %v", got)
	}
}

// TestVerifierUnknownField: a verifier section with a field this pipeline
// does not know is refused when the card loads, and a known zoom section
// loads.
func TestVerifierUnknownField(t *testing.T) {
	dir := t.TempDir()
	writeModel(t, dir, "det", nil)
	writeModel(t, dir, "m", func(c *model.Card) {
		cropCard("det")(c)
		c.Verifier = goodVerifier()
		c.Verifier.Zoom = &model.VerifierZoom{Margin: 4, MaxFactor: 6}
	})
	c, err := model.LoadCard(filepath.Join(dir, "m"))
	if err != nil {
		t.Fatal(err)
	}
	if z := c.Verifier.Zoom; z == nil || *z != (model.VerifierZoom{Margin: 4, MaxFactor: 6}) {
		t.Fatalf("zoom %+v, want margin 4, max_factor 6", z)
	}
	path := filepath.Join(dir, "m", model.CardFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte(`"zoom"`), []byte(`"zoom_v2"`), 1)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = model.LoadCard(filepath.Join(dir, "m"))
	if !errors.Is(err, model.ErrBadCard) || !strings.Contains(err.Error(), "zoom_v2") {
		t.Fatalf("LoadCard with verifier.zoom_v2: %v, want ErrBadCard naming the field", err)
	}
}
