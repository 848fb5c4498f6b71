package findings

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// Completion reasons of a Finding.
const (
	CompletedQuiet  = "series-quiet"
	CompletedFlush  = "replay-flush"
	CompletedSingle = "single-slice"
)

// Group joins the components of the slices of one series (one model, one
// replay) that overlap on adjacent slices into nodules. Slices are ordered
// by slice position, then id; "adjacent" means next to each other in that
// order. Each slice's components must be those Analyze found with the same
// MinSizePx (they are matched to the label image by index). completedBy
// is recorded in every finding.
func (c Config) Group(slices []*lungsegv1.SeriesSlice, completedBy string) ([]*lungsegv1.Finding, error) {
	c = c.WithDefaults()
	if len(slices) == 0 {
		return nil, ErrNoSlices
	}
	ss := append([]*lungsegv1.SeriesSlice(nil), slices...)
	sort.SliceStable(ss, func(i, j int) bool {
		a, b := ss[i].GetMeta(), ss[j].GetMeta()
		if a.GetSlicePosition() != b.GetSlicePosition() {
			return a.GetSlicePosition() < b.GetSlicePosition()
		}
		return a.GetId() < b.GetId()
	})
	// Label every slice again and check it agrees with its components.
	labels := make([][]int32, len(ss))
	dims := make([][2]int, len(ss))
	base := make([]int, len(ss)+1) // node number of slice i's component k: base[i]+k-1
	for i, s := range ss {
		if s.GetMeta() == nil {
			return nil, ErrNoMeta
		}
		rows, cols := int(s.Meta.Rows), int(s.Meta.Cols)
		if err := imgx.CheckSize(rows, cols); err != nil {
			return nil, fmt.Errorf("slice %s: %w", s.Meta.Id, err)
		}
		dims[i] = [2]int{rows, cols}
		if len(s.Components) == 0 && len(s.PredBits) == 0 {
			base[i+1] = base[i] // nothing predicted: the bits are not stored
			continue
		}
		m, err := imgx.UnpackMask(rows, cols, s.PredBits)
		if err != nil {
			return nil, fmt.Errorf("unpacking slice %s: %w", s.Meta.Id, err)
		}
		lab, n := imgx.Labels(m, c.MinSizePx)
		if n != len(s.Components) {
			return nil, fmt.Errorf("%w: slice %s has %d components but its mask %d (different minimum size?)", ErrShape, s.Meta.Id, len(s.Components), n)
		}
		labels[i] = lab
		base[i+1] = base[i] + n
	}
	uf := newUnionFind(base[len(ss)])
	for i := 0; i+1 < len(ss); i++ {
		if dims[i] != dims[i+1] || labels[i] == nil || labels[i+1] == nil {
			continue
		}
		a, b := labels[i], labels[i+1]
		for p := range a {
			if a[p] > 0 && b[p] > 0 {
				uf.union(base[i]+int(a[p])-1, base[i+1]+int(b[p])-1)
			}
		}
	}
	thick, thickAssumed := c.thickness(ss)
	groups := map[int][]*lungsegv1.Component{}
	var order []int
	metaOf := map[*lungsegv1.Component]*lungsegv1.SliceMeta{}
	for i, s := range ss {
		for k, comp := range s.Components {
			root := uf.find(base[i] + k)
			if _, ok := groups[root]; !ok {
				order = append(order, root)
			}
			groups[root] = append(groups[root], comp)
			metaOf[comp] = s.Meta
		}
	}
	first := ss[0]
	out := make([]*lungsegv1.Finding, 0, len(order))
	for _, root := range order {
		comps := groups[root]
		f := &lungsegv1.Finding{
			ReplayId: first.Meta.ReplayId, Model: first.Model, ModelVersion: first.ModelVersion,
			StudyUid: first.Meta.StudyUid, SeriesUid: first.Meta.SeriesUid, Source: first.Meta.Source,
			CategoryBasis: CategoryBasis, SliceThicknessMm: thick, ThicknessAssumed: thickAssumed,
			Components: comps, CompletedBy: completedBy,
			FirstPosition: math.Inf(1), LastPosition: math.Inf(-1),
		}
		var area, hu, huArea, prob, probArea float64
		seen := map[string]bool{}
		for _, k := range comps {
			meta := metaOf[k]
			if _, _, assumed := c.Spacing(meta); assumed {
				f.SpacingAssumed = true
			}
			if !seen[meta.Id] {
				seen[meta.Id] = true
				f.SliceIds = append(f.SliceIds, meta.Id)
				if meta.InstanceUid != "" {
					f.InstanceUids = append(f.InstanceUids, meta.InstanceUid)
				}
			}
			if f.TruthLabel == "" {
				f.TruthLabel = meta.Label
			}
			f.DiameterMm = math.Max(f.DiameterMm, k.DiameterMm)
			f.FirstPosition = math.Min(f.FirstPosition, meta.SlicePosition)
			f.LastPosition = math.Max(f.LastPosition, meta.SlicePosition)
			area += k.AreaMm2
			f.CentroidRow += k.CentroidRow * k.AreaMm2
			f.CentroidCol += k.CentroidCol * k.AreaMm2
			f.CentroidPosition += meta.SlicePosition * k.AreaMm2
			if k.HuKnown {
				hu += k.MeanHu * k.AreaMm2
				huArea += k.AreaMm2
			}
			if k.ProbKnown {
				prob += k.MeanProb * k.AreaMm2
				probArea += k.AreaMm2
			}
		}
		f.Slices = int32(len(f.SliceIds))
		f.VolumeMm3 = area * thick
		if area > 0 {
			f.CentroidRow /= area
			f.CentroidCol /= area
			f.CentroidPosition /= area
		}
		if huArea > 0 {
			f.MeanHu, f.HuKnown = hu/huArea, true
		}
		if probArea > 0 {
			f.MeanProb, f.ProbKnown = prob/probArea, true
		}
		f.Category = Category(f.DiameterMm)
		f.Id = findingID(f.ReplayId, f.Model, f.StudyUid, f.SeriesUid, comps[0].SliceId, comps[0].Index)
		out = append(out, f)
	}
	return out, nil
}

// thickness is the median distance between consecutive distinct slice
// positions of a series, or the default (assumed) for slices without a
// series, with fewer than two positions, or whose positions are row or
// file numbers rather than millimetres (pickles, PNG pairs).
func (c Config) thickness(ss []*lungsegv1.SeriesSlice) (float64, bool) {
	if ss[0].Meta.SeriesUid == "" || ordinalPositions[ss[0].Meta.Source] {
		return c.DefaultThicknessMm, true
	}
	var d []float64
	for i := 1; i < len(ss); i++ {
		if g := ss[i].Meta.SlicePosition - ss[i-1].Meta.SlicePosition; g > 0 {
			d = append(d, g)
		}
	}
	if len(d) == 0 {
		return c.DefaultThicknessMm, true
	}
	sort.Float64s(d)
	return d[len(d)/2], false
}

// findingID is a stable id: the same nodule of the same replay and model
// gets the same id, so republishing is deduplicated.
func findingID(parts ...any) string {
	h := sha256.New()
	var b strings.Builder
	for _, p := range parts {
		fmt.Fprintf(&b, "%v\x00", p)
	}
	h.Write([]byte(b.String()))
	return "f-" + hex.EncodeToString(h.Sum(nil))[:20]
}

// ordinalPositions are the sources whose SliceMeta.slice_position is the
// row or file number, not a position in mm.
var ordinalPositions = map[string]bool{"pkl": true, "png": true}

type unionFind []int

func newUnionFind(n int) unionFind {
	u := make(unionFind, n)
	for i := range u {
		u[i] = i
	}
	return u
}

func (u unionFind) find(x int) int {
	for u[x] != x {
		u[x] = u[u[x]]
		x = u[x]
	}
	return x
}

// union joins two sets, keeping the smaller root so that a group's root
// is its first component in slice order.
func (u unionFind) union(a, b int) {
	ra, rb := u.find(a), u.find(b)
	if ra == rb {
		return
	}
	if rb < ra {
		ra, rb = rb, ra
	}
	u[rb] = ra
}

// Series measures the slices of one series and groups them into nodules,
// as the stage does when the series completes: Analyze on every slice,
// then Group (completedBy recorded in every finding). A SEG/SR writer that
// has the same predicted masks gets the same findings, ids included.
func (c Config) Series(ins []SliceInput, completedBy string) ([]*lungsegv1.Finding, error) {
	if len(ins) == 0 {
		return nil, ErrNoSlices
	}
	ss := make([]*lungsegv1.SeriesSlice, 0, len(ins))
	for _, in := range ins {
		sf, err := c.Analyze(in)
		if err != nil {
			return nil, err
		}
		s := &lungsegv1.SeriesSlice{Meta: in.Meta, Model: in.Model, ModelVersion: in.ModelVersion, Components: sf.Components}
		if len(sf.Components) > 0 {
			s.PredBits = in.Pred.PackBits()
		}
		ss = append(ss, s)
	}
	return c.Group(ss, completedBy)
}
