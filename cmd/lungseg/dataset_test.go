package main

import (
	"context"
	"encoding/csv"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/internal/dataset"
	"github.com/lungseg/lungseg/internal/phantom"
)

// TestDatasetBuildEveryFormat runs "dataset build" on phantom slices in
// each input format and checks the pairs, the grouping and the flags.
func TestDatasetBuildEveryFormat(t *testing.T) {
	const n = 4
	for _, c := range []struct {
		format, group string
	}{{"png", "dir:"}, {"pkl", "row:"}, {"dicom", "study:"}} {
		t.Run(c.format, func(t *testing.T) {
			src := t.TempDir()
			in, err := writePhantoms(src, c.format, 3, n, phantom.Options{Rows: 96, Cols: 96})
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "ds")
			args := []string{"build", "--out", out, "--size", "64", "--copies", "2", "--seed", "9", in, "--workers", "2"}
			if c.format == "dicom" {
				args = append(args, "--masks", filepath.Join(src, phantom.MasksDir))
			}
			if err := cmdDataset(context.Background(), args); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(filepath.Join(out, dataset.ManifestName))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			recs, err := csv.NewReader(f).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 1+3*n {
				t.Fatalf("%d manifest lines, want %d", len(recs), 1+3*n)
			}
			for _, r := range recs[1:] {
				// file, mask, source, input, id, group, ..., rows at 17
				if !strings.HasPrefix(r[5], c.group) || r[17] != "64" || r[7] != dataset.Train {
					t.Fatalf("row %v", r)
				}
				if _, err := os.Stat(filepath.Join(out, r[0])); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestDatasetFlags(t *testing.T) {
	o, err := parseDatasetFlags([]string{"--out", "o", "a", "--seed", "5", "b", "--rotate", "10", "--elastic-alpha", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.Inputs, ",") != "a,b" || o.Seed != 5 || o.Copies != 4 || o.Size != 256 ||
		o.Augment.Steps[0].MaxDeg != 10 || o.Augment.Steps[2].Alpha != 0 {
		t.Fatalf("options %+v", o)
	}
	for _, bad := range [][]string{
		{"a"},                                // no --out
		{"--out", "o"},                       // no inputs
		{"--out", "o", "--flip-h", "2", "a"}, // probability > 1
		{"--out", "o", "--nope", "a"},
	} {
		if _, err := parseDatasetFlags(bad, io.Discard); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
	aug := filepath.Join(t.TempDir(), "aug.json")
	if err := os.WriteFile(aug, []byte(`{"steps":[{"op":"flip","h":1}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err = parseDatasetFlags([]string{"--out", "o", "--augment", aug, "a"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Augment.Steps) != 1 || o.Augment.Steps[0].H != 1 || o.Augment.Window.Width != 1500 {
		t.Fatalf("augment from file: %+v", o.Augment)
	}
}
