package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/dataset"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/preprocess/augment"
	"github.com/mattn/go-isatty"
)

const datasetUsage = `usage: lungseg dataset build --out DIR [flags] INPUT...

Builds an augmented training set of PNG pairs (16-bit HU+1024 image, 8-bit
0/255 mask) from labelled inputs (pickles, DICOM with --masks, PNG pairs,
folders of them): copy 0 of every slice is the original resized to
--size; training slices also get --copies augmented copies (rotation,
flips, elastic deformation, brightness and contrast), validation slices
none. Writes DIR/{train,val}/..., DIR/manifest.csv and DIR/dataset.json.
The same --seed writes the same bytes.

flags:
`

// cmdDataset implements "lungseg dataset build".
func cmdDataset(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "build" {
		fmt.Fprint(os.Stderr, datasetUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return flag.ErrHelp
		}
		return errors.New("want a subcommand: build")
	}
	o, err := parseDatasetFlags(args[1:], os.Stderr)
	if err != nil {
		return err
	}
	if isatty.IsTerminal(os.Stderr.Fd()) || isatty.IsCygwinTerminal(os.Stderr.Fd()) {
		o.Terminal = true
	}
	o.Progress, o.Warn = os.Stderr, os.Stderr
	sum, err := dataset.Build(ctx, o)
	if sum != nil {
		fmt.Printf("%d slices (%d train, %d validation, %d groups of which %d validation) -> %d pairs in %s\n",
			sum.Slices, sum.Train, sum.Val, sum.Groups, sum.ValGroups, sum.Pairs, o.Out)
		if sum.NoMask > 0 || sum.Failed > 0 {
			fmt.Printf("skipped %d slices without a mask and %d that could not be read\n", sum.NoMask, sum.Failed)
		}
	}
	if err != nil {
		return err
	}
	if sum.Slices == 0 {
		return errors.New("no labelled slice found in the inputs")
	}
	return nil
}

// parseDatasetFlags reads the flags of "dataset build", which may come
// before, between or after the inputs.
func parseDatasetFlags(args []string, out io.Writer) (dataset.Options, error) {
	fs := flag.NewFlagSet("dataset build", flag.ContinueOnError)
	fs.SetOutput(out)
	dst := fs.String("out", "", "output folder, absent or empty (required)")
	copies := fs.Int("copies", 4, "augmented copies per training slice")
	seed := fs.Uint64("seed", 1, "seed of the split and the augmentation")
	valFrac := fs.Float64("val-fraction", 0, "share of patients (groups) put in the validation split")
	size := fs.Int("size", 256, "output rows and columns (0 keeps each slice's size)")
	masks := fs.String("masks", "", "folder of ground-truth PNGs for DICOM inputs")
	group := fs.String("group", dataset.GroupAuto, "split groups: auto (DICOM study, PNG folder, pickle row), dir or slice")
	workers := fs.Int("workers", 0, "parallel workers (0: twice the CPUs, at least 4)")
	modelName := fs.String("model", "", "take --size and the window from this model's card")
	modelsDir := fs.String("models-dir", "models", "model registry folder (with --model)")
	center := fs.Float64("window-center", augment.LungWindow.Center, "HU window centre for brightness/contrast")
	width := fs.Float64("window-width", augment.LungWindow.Width, "HU window width for brightness/contrast")
	rotate := fs.Float64("rotate", 30, "largest rotation in degrees (uniform in ±rotate)")
	flipH := fs.Float64("flip-h", 0.5, "probability of a left-right flip")
	flipV := fs.Float64("flip-v", 0.5, "probability of a top-bottom flip")
	alpha := fs.Float64("elastic-alpha", augment.DefaultAlpha, "elastic deformation scale in output pixels (0: none)")
	sigma := fs.Float64("elastic-sigma", augment.DefaultSigma, "elastic deformation smoothing in output pixels")
	bright := fs.Float64("brightness", 0.1, "largest brightness shift, in window units")
	contrast := fs.Float64("contrast", 0.1, "largest contrast change (factor in 1±contrast)")
	augFile := fs.String("augment", "", "JSON file with an augment.Config (window and steps), replacing the step flags")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), datasetUsage)
		fs.PrintDefaults()
	}
	var inputs []string
	for {
		if err := fs.Parse(args); err != nil {
			return dataset.Options{}, err
		}
		if fs.NArg() == 0 {
			break
		}
		inputs = append(inputs, fs.Arg(0))
		args = fs.Args()[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *dst == "" {
		fs.Usage()
		return dataset.Options{}, errors.New("--out is required")
	}
	if len(inputs) == 0 {
		fs.Usage()
		return dataset.Options{}, errors.New("no inputs")
	}
	win := augment.Window{Center: *center, Width: *width}
	if *modelName != "" {
		reg, err := model.OpenRegistry(*modelsDir)
		if err != nil {
			return dataset.Options{}, err
		}
		card, err := reg.Get(*modelName)
		if err != nil {
			return dataset.Options{}, err
		}
		if card.Input.Height != card.Input.Width {
			return dataset.Options{}, fmt.Errorf("model %s takes %d×%d input; dataset writes square slices", card.Name, card.Input.Height, card.Input.Width)
		}
		if !set["size"] {
			*size = card.Input.Height
		}
		if !set["window-center"] && !set["window-width"] {
			win = augment.Window{Center: card.Normalisation.Center, Width: card.Normalisation.Width}
		}
	}
	cfg := augment.Config{Window: win, Steps: []augment.Step{
		{Op: "rotate", MaxDeg: *rotate},
		{Op: "flip", H: *flipH, V: *flipV},
		{Op: "elastic", Alpha: *alpha, Sigma: *sigma},
		{Op: "intensity", Brightness: *bright, Contrast: *contrast},
	}}
	if *augFile != "" {
		b, err := os.ReadFile(*augFile)
		if err != nil {
			return dataset.Options{}, err
		}
		cfg = augment.Config{Window: win}
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return dataset.Options{}, fmt.Errorf("reading %s: %w", *augFile, err)
		}
	}
	if _, err := augment.New(cfg); err != nil {
		return dataset.Options{}, err
	}
	return dataset.Options{
		Out: *dst, Inputs: inputs, MasksDir: *masks, Formats: formats.All(),
		Copies: *copies, Seed: *seed, ValFraction: *valFrac, Size: *size,
		Augment: cfg, Group: *group, Workers: *workers,
	}, nil
}
