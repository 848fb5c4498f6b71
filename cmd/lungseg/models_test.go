package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/rs/zerolog"
)

// row returns the table row of one model, split into cells.
func row(t *testing.T, out, name string) []string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return f
		}
	}
	t.Fatalf("no row for %s in\n%s", name, out)
	return nil
}

func TestModelsListsCropModelsAndCascades(t *testing.T) {
	tests := []struct {
		name     string
		models   []string
		tamper   string // model whose file is changed after its card was written
		failOpen string // model the opener rejects
		verify   bool
		rows     map[string][]string // model → task, detector, verify cell words
		cascades string
		notes    []string
		wantErr  error
	}{
		{
			name:     "slice and cascade",
			models:   []string{"tiny", "tiny-det", "tiny-crop"},
			rows:     map[string][]string{"tiny": {"slice", "-"}, "tiny-det": {"slice", "-"}, "tiny-crop": {"crop", "tiny-det"}},
			cascades: "cascades: tiny-det+crop",
		},
		{
			name:     "verify all",
			models:   []string{"tiny", "tiny-det", "tiny-crop"},
			verify:   true,
			rows:     map[string][]string{"tiny": {"slice", "-", "sha256", "ok,", "ort", "ok"}, "tiny-crop": {"crop", "tiny-det", "sha256", "ok,", "ort", "ok"}},
			cascades: "cascades: tiny-det+crop",
		},
		{
			name:     "crop model checksum mismatch",
			models:   []string{"tiny-det", "tiny-crop"},
			tamper:   "tiny-crop",
			verify:   true,
			rows:     map[string][]string{"tiny-det": {"slice", "-", "sha256", "ok,", "ort", "ok"}, "tiny-crop": {"crop", "tiny-det", "sha256", "MISMATCH"}},
			cascades: "cascades: tiny-det+crop",
			wantErr:  model.ErrChecksum,
		},
		{
			name:     "crop model runtime failure",
			models:   []string{"tiny-det", "tiny-crop"},
			failOpen: "tiny-crop",
			verify:   true,
			rows:     map[string][]string{"tiny-det": {"slice", "-", "sha256", "ok,", "ort", "ok"}, "tiny-crop": {"crop", "tiny-det", "sha256", "ok,", "ort", "FAILED"}},
			cascades: "cascades: tiny-det+crop",
			wantErr:  errOpen,
		},
		{
			name:     "crop model without its detector",
			models:   []string{"tiny", "tiny-crop"},
			verify:   true,
			rows:     map[string][]string{"tiny-crop": {"crop", "tiny-det", "sha256", "ok,", "ort", "ok"}},
			cascades: "cascades: none",
			notes:    []string{"crop model tiny-crop has no cascade: detector tiny-det"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := testenv.TestRegistry(t, tc.models...)
			if tc.tamper != "" {
				p := filepath.Join(dir, tc.tamper, model.ModelFile)
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)-1] ^= 1
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			reg, err := model.OpenRegistry(dir)
			if err != nil {
				t.Fatal(err)
			}
			var opened []string
			open := func(c *model.Card) error {
				opened = append(opened, c.Name)
				if c.Name == tc.failOpen {
					return errOpen
				}
				return nil
			}
			var out bytes.Buffer
			err = printModels(&out, reg, tc.verify, open)
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v\n%s", err, tc.wantErr, out.String())
			}
			s := out.String()
			for name, want := range tc.rows {
				got := row(t, s, name)
				const fixed = 12 // name … sha256 prefix
				cells := append([]string{got[1], got[2]}, got[min(fixed, len(got)):]...)
				if strings.Join(cells, " ") != strings.Join(want, " ") {
					t.Errorf("%s: cells %q, want %q\n%s", name, cells, want, s)
				}
			}
			if n := strings.Count(s, "\n") - 2; n != len(tc.models)+1+len(tc.notes) {
				t.Errorf("%d lines after the header, want %d\n%s", n, len(tc.models)+1+len(tc.notes), s)
			}
			if !strings.Contains(s, "\n"+tc.cascades+"\n") {
				t.Errorf("no %q in\n%s", tc.cascades, s)
			}
			for _, n := range tc.notes {
				if !strings.Contains(s, n) {
					t.Errorf("no %q in\n%s", n, s)
				}
			}
			if !tc.verify && len(opened) > 0 {
				t.Errorf("opened %v without verify", opened)
			}
			if tc.verify {
				want := len(tc.models)
				if tc.tamper != "" {
					want-- // a mismatching file is not opened
				}
				if len(opened) != want {
					t.Errorf("opened %v, want %d models", opened, want)
				}
			}
		})
	}
}

var errOpen = errors.New("test: open refused")

func TestModelsJSONListsEveryCard(t *testing.T) {
	reg, err := model.OpenRegistry(testenv.TestRegistry(t, "tiny-det", "tiny-crop"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printModelsJSON(&out, reg); err != nil {
		t.Fatal(err)
	}
	var cards []model.Card
	if err := json.Unmarshal(out.Bytes(), &cards); err != nil {
		t.Fatal(err)
	}
	if len(cards) != 2 || cards[0].Name != "tiny-crop" || cards[0].Task != model.TaskCrop || cards[0].Detector != "tiny-det" || cards[1].Name != "tiny-det" {
		t.Fatalf("cards %+v", cards)
	}
}

// TestModelsVerifyOpensWithORT runs the real opener: ONNX Runtime must
// open and run the tiny detector and crop model, and refuse a model whose
// graph does not match its card.
func TestModelsVerifyOpensWithORT(t *testing.T) {
	dir := testenv.TestRegistry(t, "tiny-det", "tiny-crop")
	reg, err := model.OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	open := ortOpener(context.Background(), zerolog.Nop())
	var out bytes.Buffer
	if err := printModels(&out, reg, true, open); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got := row(t, out.String(), "tiny-crop"); got[len(got)-1] != "ok" || got[len(got)-2] != "ort" {
		t.Fatalf("row %q", got)
	}
	c, err := reg.Get("tiny-crop")
	if err != nil {
		t.Fatal(err)
	}
	bad := *c
	bad.InputName = "no-such-input"
	if err := open(&bad); err == nil {
		t.Fatal("opened a model whose input name differs from its card")
	}
}

// TestModelsVerifier: a crop model's verifier is listed, its sha256 is
// checked with the model's, and ortOpener opens it with ONNX Runtime.
func TestModelsVerifier(t *testing.T) {
	shipped := filepath.Join(testenv.RepoRoot(t), "models", "resnet50-unet-small-crop")
	src, err := model.LoadCard(shipped)
	if err != nil {
		t.Fatal(err)
	}
	if src.Verifier == nil {
		t.Fatal("the shipped resnet50-unet-small-crop has no verifier")
	}
	vb, err := os.ReadFile(src.VerifierPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, tamper := range []bool{false, true} {
		dir := testenv.TestRegistry(t, "tiny-det", "tiny-crop")
		crop := filepath.Join(dir, "tiny-crop")
		b := append([]byte(nil), vb...)
		if tamper {
			b[len(b)-1] ^= 1
		}
		if err := os.WriteFile(filepath.Join(crop, "verifier.onnx"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		var card map[string]any
		cb, err := os.ReadFile(filepath.Join(crop, model.CardFile))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(cb, &card); err != nil {
			t.Fatal(err)
		}
		card["verifier"] = src.Verifier
		if cb, err = json.Marshal(card); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(crop, model.CardFile), cb, 0o644); err != nil {
			t.Fatal(err)
		}
		reg, err := model.OpenRegistry(dir)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		err = printModels(&out, reg, true, ortOpener(context.Background(), zerolog.Nop()))
		s := out.String()
		if !strings.Contains(s, "crop model tiny-crop has a verifier: verifier.onnx (patch 32") {
			t.Errorf("no verifier line in\n%s", s)
		}
		cells := strings.Join(row(t, s, "tiny-crop")[12:], " ")
		if tamper {
			if !errors.Is(err, model.ErrChecksum) || cells != "verifier sha256 MISMATCH" {
				t.Errorf("tampered verifier: err %v, cells %q", err, cells)
			}
			continue
		}
		if err != nil || cells != "sha256 ok, ort ok" {
			t.Errorf("err %v, cells %q\n%s", err, cells, s)
		}
	}
}
