package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/preprocess"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/lungseg/lungseg/segment/refine"
)

// Cascade is the per-slice cost of one "<detector>+crop" cascade against
// its detector alone, on the same slices, model sessions and threads, in a
// bare loop (no bus): what the cascade adds per slice, before the lung
// field (candidates anywhere) and after it (the field computed from HU,
// candidates only inside it), as the pipeline runs it: the detector as
// segment runs it, then the refine stage's own code (refine.Stage.Refine:
// windows, crop model, merge) and score's threshold.
type Cascade struct {
	Model   string `json:"model"`
	Threads int    `json:"threads"`
	Slices  int    `json:"slices"`
	// Source names the slices: a real series folder, or "phantoms".
	Source string `json:"source"`
	// Verified: the crop model's verifier (segment/verify) ran on the
	// refined maps, as the refine stage runs it; its time is in the
	// cascade's.
	Verified bool `json:"verified,omitempty"`
	// DetectorMs is the detector alone per slice (window, resize, run,
	// resize back), median over rounds.
	DetectorMs float64 `json:"detector_ms"`
	// NoFieldMs and FieldMs are the whole cascade per slice without and
	// with the lung field (the field's own computation included), and
	// NoFieldWindows / FieldWindows the crop windows run per slice.
	NoFieldMs      float64 `json:"no_field_ms"`
	FieldMs        float64 `json:"field_ms"`
	NoFieldWindows float64 `json:"no_field_windows"`
	FieldWindows   float64 `json:"field_windows"`
	// LungFieldMs is the field's computation alone per slice.
	LungFieldMs float64 `json:"lung_field_ms"`
	// RefineMs is the refine stage's part of FieldMs per slice (windows,
	// crop model, merge, threshold; no detector run): what selecting the
	// cascade beside its detector costs, since segment runs the detector
	// once for both.
	RefineMs float64 `json:"refine_ms"`
	// RatioBeside is the detector and its cascade together over the
	// detector alone: (DetectorMs + RefineMs) / DetectorMs (before the
	// refine stage, segment ran the detector a second time for the
	// cascade: (DetectorMs + FieldMs) / DetectorMs).
	RatioBeside float64 `json:"ratio_beside"`
	// RatioNoField and RatioField are the cascade's cost over the
	// detector's.
	RatioNoField float64 `json:"ratio_no_field"`
	RatioField   float64 `json:"ratio_field"`
	// DetectorSpread, FieldSpread and RatioFieldSpread are the min, median
	// and max over rounds (the ratio over paired rounds).
	DetectorSpread   Spread `json:"detector_spread"`
	FieldSpread      Spread `json:"field_spread"`
	RatioFieldSpread Spread `json:"ratio_field_spread"`
}

// cascadeSlice is one slice of the cascade section.
type cascadeSlice struct {
	hu           *imgx.HU
	rowMm, colMm float64
}

// cascadeSlices returns N slices for the cascade section: evenly spread
// over a real series (CascadeSeries, by default ct_series/popi_00_141 of
// ../shared/data beside the repository) when it can be read, else the
// run's phantom series.
func (r *runner) cascadeSlices() ([]cascadeSlice, string, error) {
	dir := r.o.CascadeSeries
	if dir == "" {
		dir = filepath.Join(filepath.Dir(filepath.Clean(r.o.ModelsDir)), "..", "shared", "data", "ct_series", "popi_00_141")
	}
	if dir != "none" {
		if files, err := filepath.Glob(filepath.Join(dir, "*.dcm")); err == nil && len(files) > 0 {
			sort.Strings(files)
			var out []cascadeSlice
			for k := 0; k < r.o.N; k++ {
				// the middle 80% of the series, where the lungs are
				f := files[len(files)/10+k*(len(files)*8/10)/max(1, r.o.N)]
				img, err := dicomio.ReadFile(f)
				if err != nil {
					return nil, "", fmt.Errorf("bench: cascade slices: %w", err)
				}
				for _, fr := range img.Frames {
					out = append(out, cascadeSlice{hu: fr.HU, rowMm: fr.SpacingRowMm, colMm: fr.SpacingColMm})
				}
			}
			return out, dir, nil
		} else if r.o.CascadeSeries != "" {
			return nil, "", fmt.Errorf("%w: no DICOM files in cascade series %s", ErrOptions, dir)
		}
	}
	set, _, err := r.mainSet()
	if err != nil {
		return nil, "", err
	}
	var out []cascadeSlice
	for _, s := range set.slices {
		out = append(out, cascadeSlice{hu: s.HU, rowMm: s.SpacingMm, colMm: s.SpacingMm})
	}
	return out, "phantoms", nil
}

// cascadeLoop runs a detector (and, with crop set, its cascade through
// the refine stage's code) over the slices as segment, refine and score
// do and returns the time, the part of it refine took, and the crop
// windows run; ver, when not nil, is the crop model's verifier. field:
// compute each slice's lung field and plan candidates inside it.
func cascadeLoop(det, crop *infer.Session, ver *infer.Classifier, dcard, ccard *model.Card, slices []cascadeSlice, field bool) (total, refined time.Duration, windows int, err error) {
	h, w := dcard.Input.Height, dcard.Input.Width
	var rs *refine.Stage
	if ccard != nil {
		rs = &refine.Stage{Detector: dcard.Name, Crop: ccard, CropModel: crop}
		if ver != nil {
			rs.Verifier = ver
		}
	}
	start := time.Now()
	for _, s := range slices {
		var f *imgx.Mask
		if field {
			m, err := lungfield.Compute(s.hu, s.rowMm, s.colMm, lungfield.Options{})
			if err == nil {
				f = m
			}
		}
		prob, err := det.Run(preprocess.Input(s.hu, dcard), 1)
		if err != nil {
			return 0, 0, 0, err
		}
		if rs == nil {
			native := imgx.ResizeBilinear(prob, h, w, s.hu.Rows, s.hu.Cols)
			score.Threshold(native, s.hu.Rows, s.hu.Cols, dcard.Threshold)
			continue
		}
		rstart := time.Now()
		o := &lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Rows: int32(s.hu.Rows), Cols: int32(s.hu.Cols)}, Model: dcard.Name,
			Height: int32(h), Width: int32(w)}
		if f != nil {
			o.FieldBits, o.HasField = f.PackBits(), true
		}
		out, err := rs.Refine(o, prob, s.hu)
		if err != nil {
			return 0, 0, 0, err
		}
		windows += len(out.Windows)
		// Score's side: decode the refined map, threshold it with ">".
		m, err := imgx.DecodeFloat32(s.hu.Rows*s.hu.Cols, out.Prob)
		if err != nil {
			return 0, 0, 0, err
		}
		mask := score.Above(m, s.hu.Rows, s.hu.Cols, out.Threshold)
		if f != nil {
			lungfield.Remove(mask, f)
		}
		refined += time.Since(rstart)
	}
	return time.Since(start), refined, windows, nil
}

// cascades measures every selected cascade against its detector.
func (r *runner) cascades(ctx context.Context, reg *model.Registry, names []string) error {
	var pairs [][2]*model.Card
	for _, n := range names {
		if !model.IsCascade(n) {
			continue
		}
		base, _ := model.SplitVariant(n)
		d, err := reg.Get(base)
		if err != nil {
			return err
		}
		c, ok := reg.Crop(base)
		if !ok {
			return fmt.Errorf("bench: %s: no crop model for %s", n, base)
		}
		pairs = append(pairs, [2]*model.Card{d, c})
	}
	if len(pairs) == 0 {
		r.rep.Skipped = append(r.rep.Skipped, "cascade: no cascade selected")
		return nil
	}
	slices, source, err := r.cascadeSlices()
	if err != nil {
		return err
	}
	n := float64(len(slices))
	for _, pr := range pairs {
		dcard, ccard := pr[0], pr[1]
		for _, t := range r.o.Threads {
			if err := ctx.Err(); err != nil {
				return err
			}
			det, err := infer.Open(dcard, r.o.infer(t), *r.o.Log)
			if err != nil {
				return err
			}
			crop, err := infer.Open(ccard, r.o.infer(t), *r.o.Log)
			if err != nil {
				det.Close()
				return err
			}
			var ver *infer.Classifier
			if ccard.Verifier != nil {
				if ver, err = infer.OpenClassifier(ccard, r.o.infer(t)); err != nil {
					crop.Close()
					det.Close()
					return err
				}
			}
			err = func() error {
				// warm-up: every path once on two slices
				warm := slices[:min(2, len(slices))]
				if _, _, _, err := cascadeLoop(det, crop, ver, dcard, ccard, warm, true); err != nil {
					return err
				}
				var dt, nf, wf, lf, rf []float64
				var nw, fw int
				for round := 0; round < r.o.Rounds; round++ {
					d, _, _, err := cascadeLoop(det, nil, nil, dcard, nil, slices, false)
					if err != nil {
						return err
					}
					a, _, wa, err := cascadeLoop(det, crop, ver, dcard, ccard, slices, false)
					if err != nil {
						return err
					}
					b, rb, wb, err := cascadeLoop(det, crop, ver, dcard, ccard, slices, true)
					if err != nil {
						return err
					}
					rf = append(rf, 1e3*rb.Seconds()/n)
					start := time.Now()
					for _, s := range slices {
						_, _ = lungfield.Compute(s.hu, s.rowMm, s.colMm, lungfield.Options{})
					}
					lf = append(lf, 1e3*time.Since(start).Seconds()/n)
					dt = append(dt, 1e3*d.Seconds()/n)
					nf = append(nf, 1e3*a.Seconds()/n)
					wf = append(wf, 1e3*b.Seconds()/n)
					nw, fw = wa, wb
				}
				c := Cascade{Model: dcard.Name + model.CropSuffix, Threads: t, Slices: len(slices), Source: source, Verified: ver != nil,
					DetectorMs: median(dt), NoFieldMs: median(nf), FieldMs: median(wf), LungFieldMs: median(lf),
					NoFieldWindows: float64(nw) / n, FieldWindows: float64(fw) / n, RefineMs: median(rf),
					DetectorSpread: spreadOf(dt), FieldSpread: spreadOf(wf), RatioFieldSpread: spreadOf(ratios(wf, dt))}
				c.RatioNoField = ratio(c.NoFieldMs, c.DetectorMs)
				c.RatioField = ratio(c.FieldMs, c.DetectorMs)
				c.RatioBeside = ratio(c.DetectorMs+c.RefineMs, c.DetectorMs)
				r.rep.Cascade = append(r.rep.Cascade, c)
				r.progress("cascade %s threads %d: detector %.1f ms/slice, cascade %.1f ms (%.2f windows) without the lung field, %.1f ms (%.2f windows) with it, of which refine %.1f ms",
					c.Model, t, c.DetectorMs, c.NoFieldMs, c.NoFieldWindows, c.FieldMs, c.FieldWindows, c.RefineMs)
				return nil
			}()
			if ver != nil {
				ver.Close()
			}
			crop.Close()
			det.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}
