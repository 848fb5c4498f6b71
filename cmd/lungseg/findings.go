package main

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"text/tabwriter"

	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
)

// categoryTable compares, per model, the size-based Lung-RADS estimate of
// each scored slice (the category of its largest predicted component, or
// "none") with the slice's dataset label (the pickle's label1). Slices
// without a label are not counted. Feed it from replay.Options.OnScore.
// Safe for concurrent use.
type categoryTable struct {
	cfg    findings.Config
	mu     sync.Mutex
	counts map[string]map[[2]string]int // model → {label, estimate} → slices
}

// noneCategory is the estimate of a slice without any component.
const noneCategory = "none"

func newCategoryTable(cfg findings.Config) *categoryTable {
	return &categoryTable{cfg: cfg, counts: map[string]map[[2]string]int{}}
}

// add counts one score.
func (t *categoryTable) add(s *lungsegv1.Score) error {
	if s.GetMeta().GetLabel() == "" {
		return nil
	}
	pred, err := imgx.UnpackMask(int(s.Meta.Rows), int(s.Meta.Cols), s.PredBits)
	if err != nil {
		return fmt.Errorf("category table: slice %s: %w", s.Meta.Id, err)
	}
	sf, err := t.cfg.Analyze(findings.SliceInput{Meta: s.Meta, Model: s.Model, Pred: pred})
	if err != nil {
		return fmt.Errorf("category table: %w", err)
	}
	est := sf.Category
	if est == "" {
		est = noneCategory
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.counts[s.Model]
	if m == nil {
		m = map[[2]string]int{}
		t.counts[s.Model] = m
	}
	m[[2]string{s.Meta.Label, est}]++
	return nil
}

// tables returns the counts as the replay report's data, one table per
// model: rows are labels in category order, columns "none" and the
// categories.
func (t *categoryTable) tables() map[string]replay.CategoryTable {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]replay.CategoryTable{}
	cols := append([]string{noneCategory}, findings.Categories...)
	for model, m := range t.counts {
		ct := replay.CategoryTable{Estimates: cols}
		labels := map[string]bool{}
		for k, n := range m {
			labels[k[0]] = true
			ct.Total += n
			if findings.Rank(k[0]) > 0 && findings.Rank(k[0]) == findings.Rank(k[1]) {
				ct.Agree += n
			}
		}
		for l := range labels {
			ct.Labels = append(ct.Labels, l)
		}
		sortLabels(ct.Labels)
		for _, l := range ct.Labels {
			row := make([]int, len(cols))
			for j, c := range cols {
				row[j] = m[[2]string{l, c}]
			}
			ct.Counts = append(ct.Counts, row)
		}
		out[model] = ct
	}
	return out
}

// sortLabels orders labels by category rank, then by name.
func sortLabels(rows []string) {
	sort.Slice(rows, func(i, j int) bool {
		ri, rj := findings.Rank(rows[i]), findings.Rank(rows[j])
		if ri != rj {
			return ri < rj
		}
		return rows[i] < rows[j]
	})
}

// print writes one confusion table per model: rows are labels, columns
// estimates.
func (t *categoryTable) print(w io.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	models := make([]string, 0, len(t.counts))
	for m := range t.counts {
		models = append(models, m)
	}
	sort.Strings(models)
	cols := append([]string{noneCategory}, findings.Categories...)
	for _, model := range models {
		m := t.counts[model]
		labels := map[string]bool{}
		total, agree := 0, 0
		for k, n := range m {
			labels[k[0]] = true
			total += n
			if findings.Rank(k[0]) > 0 && findings.Rank(k[0]) == findings.Rank(k[1]) {
				agree += n
			}
		}
		rows := make([]string, 0, len(labels))
		for l := range labels {
			rows = append(rows, l)
		}
		sortLabels(rows)
		fmt.Fprintf(w, "\nLung-RADS size-based estimate vs label1, model %s: %d of %d labelled slices agree (%.1f%%)\n",
			model, agree, total, 100*float64(agree)/float64(max(total, 1)))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "label \\ estimate\t")
		for _, c := range cols {
			fmt.Fprintf(tw, "%s\t", c)
		}
		fmt.Fprintln(tw)
		for _, l := range rows {
			fmt.Fprintf(tw, "%s\t", l)
			for _, c := range cols {
				fmt.Fprintf(tw, "%d\t", m[[2]string{l, c}])
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
	}
	if len(models) > 0 {
		fmt.Fprintln(w, "(estimate: category of the largest predicted component by its longest diameter, as a solid nodule; pixel spacing assumed where the input has none)")
	}
}

// printNodules writes the replay's nodules (findings grouped per series
// and model), or says why they may be incomplete.
func printNodules(w io.Writer, rep *replay.Report) {
	if rep.FindingsNote != "" {
		fmt.Fprintf(w, "\nFindings: %s\n", rep.FindingsNote)
	}
	if len(rep.Nodules) == 0 {
		return
	}
	fmt.Fprintf(w, "\nNodules (findings grouped across the slices of a series; size-based estimate): %d\n", len(rep.Nodules))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "model\tseries\tslices\tfirst..last\tdiameter mm\tvolume mm³\tcategory\tlabel\t")
	const most = 40
	for i, n := range rep.Nodules {
		if i == most {
			fmt.Fprintf(tw, "… and %d more in the JSON report (--report FILE)\t\t\t\t\t\t\t\t\n", len(rep.Nodules)-most)
			break
		}
		series := n.Series
		if series == "" {
			series = "-"
		}
		d := fmt.Sprintf("%.1f", n.DiameterMm)
		if n.SpacingAssumed {
			d += "*"
		}
		v := fmt.Sprintf("%.0f", n.VolumeMm3)
		if n.ThicknessAssumed {
			v += "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s..%s\t%s\t%s\t%s\t%s\t\n", n.Model, series, n.Slices, n.FirstSlice, n.LastSlice, d, v, n.Category, n.Label)
	}
	tw.Flush()
	fmt.Fprintln(w, "(* pixel spacing or slice thickness assumed)")
}
