package findings

import (
	"fmt"
	"math"
	"testing"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// phantomSlices turns a phantom series into the findings stage's stored
// slices, with the ground-truth mask as the prediction and the phantom's
// HU image.
func phantomSlices(t *testing.T, c Config, ps []phantom.Slice, model string) []*lungsegv1.SeriesSlice {
	t.Helper()
	var out []*lungsegv1.SeriesSlice
	for _, s := range ps {
		meta := phantomMeta(s, "r1")
		sf, err := c.Analyze(SliceInput{Meta: meta, Model: model, Pred: s.Mask, HU: s.HU})
		if err != nil {
			t.Fatal(err)
		}
		ss := &lungsegv1.SeriesSlice{Meta: meta, Model: model, Components: sf.Components}
		if len(sf.Components) > 0 {
			ss.PredBits = s.Mask.PackBits()
		}
		out = append(out, ss)
	}
	return out
}

func phantomMeta(s phantom.Slice, replay string) *lungsegv1.SliceMeta {
	return &lungsegv1.SliceMeta{
		Id: fmt.Sprintf("series%d/%s", s.Seed, s.Name()), ReplayId: replay, Source: "dicom",
		StudyUid: s.StudyUID, SeriesUid: s.SeriesUID, InstanceUid: s.InstanceUID,
		Rows: int32(s.HU.Rows), Cols: int32(s.HU.Cols),
		SpacingRowMm: s.SpacingMm, SpacingColMm: s.SpacingMm, SlicePosition: s.PositionMm,
	}
}

// truthNodule is what the phantom says about one nodule of a series.
type truthNodule struct {
	id                 int
	row, col           float64
	maxSectionMm       float64
	slices             int
	first, last        float64
	areaSumPx          int
	sphereDiameterMm   float64
	positionsWithPixel []float64
}

func truthNodules(ps []phantom.Slice) map[int]*truthNodule {
	out := map[int]*truthNodule{}
	for _, s := range ps {
		for _, n := range s.Nodules {
			tn, ok := out[n.ID]
			if !ok {
				tn = &truthNodule{id: n.ID, row: n.Row, col: n.Col, sphereDiameterMm: n.DiameterMm, first: s.PositionMm}
				out[n.ID] = tn
			}
			tn.maxSectionMm = math.Max(tn.maxSectionMm, n.SectionDiameterMm)
			tn.slices++
			tn.last = s.PositionMm
			tn.areaSumPx += n.Pixels
		}
	}
	return out
}

// TestPhantomSeriesNodules groups phantom series with known spherical
// nodules and checks one finding per nodule, its longest diameter within
// one pixel spacing of the largest section the slices show, its category,
// slice range, volume, centroid and mean HU.
func TestPhantomSeriesNodules(t *testing.T) {
	c := Config{MinSizePx: 1}
	total, boundary, boundaryOff := 0, 0, 0
	worst := 0.0
	for seed := int64(1); seed <= 12; seed++ {
		opts := phantom.Options{Rows: 192, Cols: 192, Series: true, MaxNodules: 3, IrregularFraction: -1,
			NoiseSigma: -1, SpacingMm: 0.6 + 0.05*float64(seed%4), SliceSpacingMm: 1.0 + 0.25*float64(seed%3)}
		ps := phantom.Generate(seed, 24, opts)
		truth := truthNodules(ps)
		fs, err := c.Group(phantomSlices(t, c, ps, "truth"), CompletedQuiet)
		if err != nil {
			t.Fatal(err)
		}
		if len(fs) != len(truth) {
			t.Errorf("seed %d: %d findings for %d nodules", seed, len(fs), len(truth))
			continue
		}
		sp := ps[0].SpacingMm
		matched := map[int]bool{}
		for _, f := range fs {
			// Match by centroid: phantom nodules are spheres at (row, col).
			var tn *truthNodule
			for _, cand := range truth {
				if math.Hypot(f.CentroidRow-cand.row, f.CentroidCol-cand.col) < 1 {
					tn = cand
				}
			}
			if tn == nil || matched[tn.id] {
				t.Errorf("seed %d: finding at (%.1f, %.1f) matches no nodule (or one already matched)", seed, f.CentroidRow, f.CentroidCol)
				continue
			}
			matched[tn.id] = true
			total++
			e := math.Abs(f.DiameterMm - tn.maxSectionMm)
			worst = math.Max(worst, e/sp)
			if e > sp {
				t.Errorf("seed %d nodule %d: diameter %.2f mm, largest section %.2f mm (spacing %.2f)", seed, tn.id, f.DiameterMm, tn.maxSectionMm, sp)
			}
			// The category is right wherever the truth is not within the
			// measuring tolerance of a category boundary.
			want := Category(tn.maxSectionMm)
			if Category(tn.maxSectionMm-sp) == want && Category(tn.maxSectionMm+sp) == want {
				if f.Category != want {
					t.Errorf("seed %d nodule %d: category %s, want %s (%.2f mm)", seed, tn.id, f.Category, want, tn.maxSectionMm)
				}
			} else {
				boundary++
				if f.Category != want {
					boundaryOff++
				}
				if d := Rank(f.Category) - Rank(want); d < -1 || d > 1 {
					t.Errorf("seed %d nodule %d: category %s, want %s or a neighbour", seed, tn.id, f.Category, want)
				}
			}
			if int(f.Slices) != tn.slices || f.FirstPosition != tn.first || f.LastPosition != tn.last {
				t.Errorf("seed %d nodule %d: slices %d at %.2f..%.2f, want %d at %.2f..%.2f", seed, tn.id, f.Slices, f.FirstPosition, f.LastPosition, tn.slices, tn.first, tn.last)
			}
			wantVol := float64(tn.areaSumPx) * sp * sp * opts.SliceSpacingMm
			if math.Abs(f.VolumeMm3-wantVol) > 1e-6*wantVol || f.ThicknessAssumed || math.Abs(f.SliceThicknessMm-opts.SliceSpacingMm) > 1e-9 {
				t.Errorf("seed %d nodule %d: volume %.3f mm³ thickness %.3f (assumed %v), want %.3f, %.3f", seed, tn.id, f.VolumeMm3, f.SliceThicknessMm, f.ThicknessAssumed, wantVol, opts.SliceSpacingMm)
			}
			// Noise-free phantom nodules are 30 ± 15 HU.
			if !f.HuKnown || f.MeanHu < phantom.HUNodule-15 || f.MeanHu > phantom.HUNodule+15 {
				t.Errorf("seed %d nodule %d: mean HU %.1f (known %v)", seed, tn.id, f.MeanHu, f.HuKnown)
			}
			if f.SeriesUid != ps[0].SeriesUID || f.StudyUid != ps[0].StudyUID || len(f.InstanceUids) != tn.slices || f.SpacingAssumed {
				t.Errorf("seed %d nodule %d: references %s %s %d instances, spacing assumed %v", seed, tn.id, f.StudyUid, f.SeriesUid, len(f.InstanceUids), f.SpacingAssumed)
			}
			if f.CategoryBasis != CategoryBasis || f.CompletedBy != CompletedQuiet || f.Id == "" {
				t.Errorf("seed %d: basis %q completed by %q id %q", seed, f.CategoryBasis, f.CompletedBy, f.Id)
			}
		}
	}
	if total < 20 {
		t.Errorf("only %d nodules checked", total)
	}
	t.Logf("%d phantom nodules, %d within one pixel spacing of a category boundary (%d of them in the neighbouring category); worst diameter error %.2f pixel spacings", total, boundary, boundaryOff, worst)
}

// TestGroupSplitsAndJoins checks adjacency on hand-made masks: overlap on
// consecutive slices joins, a gap slice or no overlap splits.
func TestGroupSplitsAndJoins(t *testing.T) {
	c := Config{MinSizePx: 1}
	mk := func(pos float64, rows ...string) *lungsegv1.SeriesSlice {
		m := testenv.MaskOf(rows...)
		meta := &lungsegv1.SliceMeta{Id: "s" + string(rune('a'+int(pos))), SeriesUid: "1.2", Rows: int32(m.Rows), Cols: int32(m.Cols),
			SpacingRowMm: 1, SpacingColMm: 1, SlicePosition: pos, InstanceUid: "i"}
		sf, err := c.Analyze(SliceInput{Meta: meta, Pred: m})
		if err != nil {
			t.Fatal(err)
		}
		return &lungsegv1.SeriesSlice{Meta: meta, Components: sf.Components, PredBits: m.PackBits()}
	}
	slices := []*lungsegv1.SeriesSlice{
		// given out of order: grouping sorts by position
		mk(2, "##....", "##...#", "......"),
		mk(0, "##....", "......", "....##"),
		mk(1, ".#....", "......", ".....#"),
		mk(3, "......", "......", "......"),
		mk(4, "##....", "##....", "......"),
	}
	fs, err := c.Group(slices, CompletedQuiet)
	if err != nil {
		t.Fatal(err)
	}
	// Nodules: top-left on 0..2 (joined through slice 1); bottom-right on
	// 0..1; (1,5) on slice 2 touches nothing on slice 1 at the same pixel;
	// top-left on 4 is cut off by the empty slice 3.
	type want struct {
		slices      int32
		first, last float64
		areaPx      int64
	}
	wants := []want{{3, 0, 2, 7}, {2, 0, 1, 3}, {1, 2, 2, 1}, {1, 4, 4, 4}}
	if len(fs) != len(wants) {
		t.Fatalf("%d findings, want %d", len(fs), len(wants))
	}
	for i, w := range wants {
		f := fs[i]
		var area int64
		for _, k := range f.Components {
			area += k.AreaPx
		}
		if f.Slices != w.slices || f.FirstPosition != w.first || f.LastPosition != w.last || area != w.areaPx {
			t.Errorf("finding %d: %d slices %.0f..%.0f area %d, want %+v", i, f.Slices, f.FirstPosition, f.LastPosition, area, w)
		}
		if f.ThicknessAssumed || f.SliceThicknessMm != 1 {
			t.Errorf("finding %d: thickness %v assumed %v", i, f.SliceThicknessMm, f.ThicknessAssumed)
		}
	}
	// Ids are stable and distinct.
	again, _ := c.Group(slices, CompletedQuiet)
	seen := map[string]bool{}
	for i := range fs {
		if fs[i].Id != again[i].Id || seen[fs[i].Id] {
			t.Errorf("finding %d id %s not stable or not unique", i, fs[i].Id)
		}
		seen[fs[i].Id] = true
	}
	// A slice without series: thickness and spacing assumed.
	sm := testenv.MaskOf("##", "##")
	smeta := &lungsegv1.SliceMeta{Id: "p/1", Rows: 2, Cols: 2, Label: "LR3"}
	ssf, err := c.Analyze(SliceInput{Meta: smeta, Pred: sm})
	if err != nil {
		t.Fatal(err)
	}
	single := &lungsegv1.SeriesSlice{Meta: smeta, Components: ssf.Components, PredBits: sm.PackBits()}
	fs, err = c.Group([]*lungsegv1.SeriesSlice{single}, CompletedSingle)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 1 || !fs[0].ThicknessAssumed || !fs[0].SpacingAssumed || fs[0].TruthLabel != "LR3" ||
		math.Abs(fs[0].VolumeMm3-4*0.7*0.7*DefaultConfig.DefaultThicknessMm) > 1e-9 {
		t.Errorf("single slice finding: %+v", fs)
	}
	// Components that do not match the mask are an error, not a guess.
	bad := mk(0, "##....", "......", "....##")
	bad.Components = bad.Components[:1]
	if _, err := c.Group([]*lungsegv1.SeriesSlice{bad}, CompletedQuiet); err == nil {
		t.Error("mismatched components accepted")
	}
}
