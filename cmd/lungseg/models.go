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
	"text/tabwriter"

	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/rs/zerolog"
)

// cmdModels lists the model registry: every card, crop models included,
// and the cascade selections it makes runnable.
func cmdModels(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("models", flag.ContinueOnError)
	dir := fs.String("models-dir", "", "model registry folder (default: $"+model.EnvRegistry+", models/ in the working directory or a parent, or beside the executable)")
	verify := fs.Bool("verify", false, "check each model file's sha256 against its card and that ONNX Runtime opens and runs it (cpu)")
	asJSON := fs.Bool("json", false, "print the cards as JSON")
	fetchORT := fs.Bool("fetch-ort", false, "fetch the ONNX Runtime library into the cache (if missing) and print its path")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := newLogger("info", os.Stderr)
	if *fetchORT {
		if err := ortlib.Init(ctx, log); err != nil {
			return err
		}
		fmt.Println(ortlib.Loaded())
	}
	regDir, err := model.FindRegistry(*dir, model.Where{})
	if err != nil {
		return err
	}
	reg, err := model.OpenRegistry(regDir)
	if err != nil {
		return err
	}
	if *asJSON {
		return printModelsJSON(os.Stdout, reg)
	}
	var open modelOpener
	if *verify {
		open = ortOpener(ctx, log)
	}
	return printModels(os.Stdout, reg, *verify, open)
}

// printModelsJSON writes every card, crop models included, as a JSON array.
func printModelsJSON(w io.Writer, reg *model.Registry) error {
	cards := []*model.Card{}
	for _, name := range reg.AllNames() {
		c, err := reg.Get(name)
		if err != nil {
			return err
		}
		cards = append(cards, c)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(cards)
}

// modelOpener checks that a runtime opens a model; nil skips the check.
type modelOpener func(*model.Card) error

// ortOpener opens each model with ONNX Runtime on the cpu (infer.Open runs
// one all-zero image through it), and its verifier when the card has one,
// and closes them again. ONNX Runtime is
// loaded on first use; a failure to load it is every model's error.
func ortOpener(ctx context.Context, log zerolog.Logger) modelOpener {
	var initErr error
	inited := false
	return func(c *model.Card) error {
		if !inited {
			inited = true
			if err := ortlib.Init(ctx, log); err != nil {
				initErr = fmt.Errorf("loading onnx runtime: %w", err)
			}
		}
		if initErr != nil {
			return initErr
		}
		s, err := infer.Open(c, infer.Options{Provider: infer.ProviderCPU}, zerolog.Nop())
		if err != nil {
			return err
		}
		if err := s.Close(); err != nil || c.Verifier == nil {
			return err
		}
		v, err := infer.OpenClassifier(c, infer.Options{})
		if err != nil {
			return err
		}
		return v.Close()
	}
}

// printModels writes the registry as a table: one row per card with its
// task ("slice" or "crop") and, for crop models, its detector, then the
// runnable cascade selections. With verify it checks each model file's
// sha256 and, when open is not nil, that open accepts it; the errors are
// joined into the result after the whole table is written.
func printModels(w io.Writer, reg *model.Registry, verify bool, open modelOpener) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "NAME\tTASK\tDETECTOR\tARCHITECTURE\tVARIANT\tVERSION\tINPUT\tWINDOW\tTHRESHOLD\tPARAMS\tSIZE\tSHA256"
	if verify {
		head += "\tVERIFY"
	}
	fmt.Fprintln(tw, head)
	var errs []error
	for _, name := range reg.AllNames() {
		c, err := reg.Get(name)
		if err != nil {
			return err
		}
		size := "-"
		if st, err := os.Stat(c.Path()); err == nil {
			size = fmt.Sprintf("%.1fMB", float64(st.Size())/1e6)
		}
		sum := c.SHA256
		if len(sum) > 12 {
			sum = sum[:12]
		}
		task, detector := model.TaskSlice, "-"
		if c.IsCrop() {
			task, detector = model.TaskCrop, c.Detector
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%dx%dx%d\t%g/%g\t%g\t%d\t%s\t%s", c.Name, task, detector,
			dash(c.Architecture), dash(c.Variant), dash(c.Version), c.Input.Channels, c.Input.Height, c.Input.Width,
			c.Normalisation.Center, c.Normalisation.Width, c.Threshold, c.Parameters, size, sum)
		if verify {
			fmt.Fprintf(tw, "\t%s", verifyModel(c, open, &errs))
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if cs := reg.Cascades(); len(cs) > 0 {
		fmt.Fprintf(w, "cascades: %s\n", strings.Join(cs, ", "))
	} else {
		fmt.Fprintln(w, "cascades: none")
	}
	for _, name := range reg.AllNames() {
		if c, _ := reg.Get(name); c.Verifier != nil {
			fmt.Fprintf(w, "crop model %s has a verifier: %s (patch %d, window %g/%g, threshold %g)\n", c.Name,
				c.Verifier.File, c.Verifier.Patch, c.Verifier.Normalisation.Center, c.Verifier.Normalisation.Width, c.Verifier.Threshold)
		}
	}
	for _, name := range reg.AllNames() {
		c, _ := reg.Get(name)
		if c.IsCrop() {
			if k, ok := reg.Crop(c.Detector); !ok || k.Name != c.Name {
				fmt.Fprintf(w, "crop model %s has no cascade: detector %s is not a whole-slice model of this registry (it runs alone)\n", c.Name, c.Detector)
			}
		}
	}
	return errors.Join(errs...)
}

// verifyModel checks one model's sha256 and, with open, that it opens; it
// returns the table cell and appends any error to errs.
func verifyModel(c *model.Card, open modelOpener, errs *[]error) string {
	if err := c.VerifyChecksum(); err != nil {
		*errs = append(*errs, err)
		if errors.Is(err, model.ErrChecksum) {
			return "sha256 MISMATCH"
		}
		return "sha256 unreadable"
	}
	if err := c.VerifyVerifierChecksum(); err != nil {
		*errs = append(*errs, err)
		if errors.Is(err, model.ErrChecksum) {
			return "verifier sha256 MISMATCH"
		}
		return "verifier sha256 unreadable"
	}
	cell := "sha256 ok"
	if open == nil {
		return cell
	}
	if err := open(c); err != nil {
		*errs = append(*errs, fmt.Errorf("opening %s: %w", c.Name, err))
		return cell + ", ort FAILED"
	}
	return cell + ", ort ok"
}
