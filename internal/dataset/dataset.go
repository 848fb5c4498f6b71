// Package dataset builds an augmented training set from labelled CT
// slices: it reads the inputs replay reads (pickles, DICOM with masks, PNG
// pairs, folders of them), splits them into training and validation by
// patient, and writes each slice as PNG pairs (16-bit HU+1024 image,
// 8-bit 0/255 mask): copy 0 is the original resized to the model's size,
// copies 1..N are augmented (preprocess/augment), for training slices
// only. A manifest.csv lists every pair with its provenance and the
// augmentation parameters drawn; dataset.json records the options.
//
// Everything random is drawn from PCG sources seeded with Options.Seed and
// the item's output name, so a seed reproduces the output tree byte for
// byte whatever the number of workers.
package dataset

import (
	"context"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/preprocess/augment"
)

// Split names.
const (
	Train = "train"
	Val   = "val"
)

// Grouping modes: how slices are grouped so that a group (a patient) is
// never on both sides of the split.
const (
	// GroupAuto groups DICOM slices by StudyUid (the series when there is
	// no study; SliceMeta has no patient field), PNG pairs by the folder
	// that holds them (one folder per patient in the LIDC layout), and
	// makes each pickle row its own group (the Mendeley pickles carry no
	// patient id).
	GroupAuto = "auto"
	// GroupDir groups every slice by its folder.
	GroupDir = "dir"
	// GroupSlice makes every slice its own group.
	GroupSlice = "slice"
)

// File names written in Options.Out.
const (
	ManifestName = "manifest.csv"
	ConfigName   = "dataset.json"
)

var (
	// ErrOutNotEmpty reports an output folder that already holds files.
	ErrOutNotEmpty = errors.New("dataset: output folder is not empty")
	// ErrOptions reports invalid options.
	ErrOptions = errors.New("dataset: invalid options")
)

// Options configure Build.
type Options struct {
	// Out is the output folder; it must be absent or empty.
	Out string
	// Inputs are files or folders, read with ingest.Walk.
	Inputs []string
	// MasksDir holds ground-truth PNGs for DICOM inputs.
	MasksDir string
	// Formats are the readers (formats.All()).
	Formats []ingest.Format
	// Copies is the number of augmented copies per training slice.
	Copies int
	// Seed seeds the split and the augmentation.
	Seed uint64
	// ValFraction is the share of groups put in the validation split.
	ValFraction float64
	// Size is the output side (Size×Size); 0 keeps each slice's size.
	Size int
	// Augment configures the augmented copies; a resize to Size is run
	// before its steps, which must work in HU (no resize or window step).
	Augment augment.Config
	// Group is GroupAuto (default), GroupDir or GroupSlice.
	Group string
	// Workers augment, encode and write in parallel (default: twice the
	// CPU count, at least 4, since creating files often dominates).
	Workers int
	// Progress receives progress reports; nil for none. With Terminal set
	// it draws a bar redrawn in place, otherwise it writes a plain line
	// every ProgressEvery (default 10s).
	Progress      io.Writer
	Terminal      bool
	ProgressEvery time.Duration
	// Warn receives one line per slice that could not be read; nil
	// discards them (Summary counts them).
	Warn io.Writer
}

// Summary counts what Build did.
type Summary struct {
	// Slices is the number of slices written (with a mask).
	Slices int `json:"slices"`
	// Train and Val count slices per split.
	Train int `json:"train"`
	Val   int `json:"val"`
	// Pairs is the number of PNG pairs written.
	Pairs int `json:"pairs"`
	// Groups and ValGroups count groups (patients) in all and in Val.
	Groups    int `json:"groups"`
	ValGroups int `json:"val_groups"`
	// NoMask counts slices skipped for having no ground truth.
	NoMask int `json:"no_mask"`
	// Failed counts slices or files that could not be read.
	Failed int `json:"failed"`
}

// Row is one line of manifest.csv.
type Row struct {
	// File and Mask are the pair's paths relative to Out.
	File, Mask string
	// Source is the reader's SliceMeta.Source (pkl, dicom, png).
	Source string
	// Input is the input argument the slice came from; ID its slice id.
	Input, ID string
	// Group is the patient (or proxy) key the split used.
	Group string
	// Label is the Lung-RADS label when the input has one.
	Label string
	// Split is Train or Val; Copy is 0 for the original.
	Split string
	Copy  int
	// OrigRows and OrigCols are the slice's size before the resize.
	OrigRows, OrigCols int
	// MaskPixels counts the output mask's set pixels.
	MaskPixels int
	// Params are the augmentation parameters (copy 0: the resize only).
	Params augment.Params
}

// ManifestHeader is the first line of manifest.csv.
var ManifestHeader = []string{"file", "mask", "source", "input", "id", "group", "label", "split", "copy",
	"steps", "angle_deg", "flip_h", "flip_v", "elastic_alpha", "elastic_sigma", "brightness", "contrast",
	"rows", "cols", "orig_rows", "orig_cols", "mask_pixels"}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

func fmtBool(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Record returns the row's manifest fields in ManifestHeader order;
// parameters of steps that did not run are empty.
func (r Row) Record() []string {
	p := r.Params
	ran := func(step string) bool { return slices.Contains(p.Steps, step) }
	opt := func(step, v string) string {
		if ran(step) {
			return v
		}
		return ""
	}
	return []string{r.File, r.Mask, r.Source, r.Input, r.ID, r.Group, r.Label, r.Split, strconv.Itoa(r.Copy),
		strings.Join(p.Steps, "+"),
		opt("rotate", fmtFloat(p.AngleDeg)),
		opt("flip", fmtBool(p.FlipH)), opt("flip", fmtBool(p.FlipV)),
		opt("elastic", fmtFloat(p.Alpha)), opt("elastic", fmtFloat(p.Sigma)),
		opt("intensity", fmtFloat(p.Brightness)), opt("intensity", fmtFloat(p.Contrast)),
		strconv.Itoa(p.Rows), strconv.Itoa(p.Cols), strconv.Itoa(r.OrigRows), strconv.Itoa(r.OrigCols),
		strconv.Itoa(r.MaskPixels)}
}

func (o *Options) check() error {
	switch {
	case o.Out == "":
		return fmt.Errorf("%w: no output folder", ErrOptions)
	case len(o.Inputs) == 0:
		return fmt.Errorf("%w: no inputs", ErrOptions)
	case len(o.Formats) == 0:
		return fmt.Errorf("%w: no formats", ErrOptions)
	case o.Copies < 0 || o.Copies > 1000:
		return fmt.Errorf("%w: copies %d not in [0,1000]", ErrOptions, o.Copies)
	case !(o.ValFraction >= 0 && o.ValFraction <= 1):
		return fmt.Errorf("%w: validation fraction %g not in [0,1]", ErrOptions, o.ValFraction)
	case o.Size < 0:
		return fmt.Errorf("%w: size %d", ErrOptions, o.Size)
	}
	if o.Size > 0 {
		if err := imgx.CheckSize(o.Size, o.Size); err != nil {
			return fmt.Errorf("%w: %v", ErrOptions, err)
		}
	}
	switch o.Group {
	case "":
		o.Group = GroupAuto
	case GroupAuto, GroupDir, GroupSlice:
	default:
		return fmt.Errorf("%w: group %q (want auto, dir or slice)", ErrOptions, o.Group)
	}
	for _, s := range o.Augment.Steps {
		if s.Op == "resize" || s.Op == "window" {
			return fmt.Errorf("%w: augment step %q (Build resizes to Size first and writes HU)", ErrOptions, s.Op)
		}
	}
	if o.Workers <= 0 {
		o.Workers = max(4, 2*runtime.NumCPU())
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 10 * time.Second
	}
	return nil
}

// checkOut makes sure Out is absent or an empty folder, and creates it.
func checkOut(out string) error {
	entries, err := os.ReadDir(out)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("dataset: reading output folder: %w", err)
	case len(entries) > 0:
		return fmt.Errorf("%w: %s", ErrOutNotEmpty, out)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("dataset: creating output folder: %w", err)
	}
	return nil
}

// job is one slice on its way to the workers.
type job struct {
	seq          int
	item         ingest.Item
	input, stem  string
	group, split string
}

// result is what a worker made of a job.
type result struct {
	seq  int
	rows []Row
	err  error
}

// Build reads every input and writes the data set. Slices that cannot be
// read are counted (Summary.Failed) and reported to Warn, and Build goes
// on; it returns an error when the options are invalid, the output cannot
// be written, or ctx ends.
func Build(ctx context.Context, o Options) (*Summary, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	orig := &augment.Pipeline{}
	augCfg := augment.Config{Window: o.Augment.Window, Steps: o.Augment.Steps}
	if o.Size > 0 {
		orig.Steps = []augment.Transform{augment.Resize{Rows: o.Size, Cols: o.Size}}
		augCfg.Steps = append([]augment.Step{{Op: "resize", Rows: o.Size, Cols: o.Size}}, augCfg.Steps...)
	}
	var aug *augment.Pipeline
	if o.Copies > 0 {
		var err error
		if aug, err = augment.New(augCfg); err != nil {
			return nil, err
		}
	}
	if err := checkOut(o.Out); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan job, 2*o.Workers)
	results := make(chan result, 2*o.Workers)
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				rows, err := o.write(j, orig, aug)
				results <- result{seq: j.seq, rows: rows, err: err}
				if err != nil {
					cancel(err)
				}
			}
		}()
	}

	sum := &Summary{}
	prog := newProgress(o.Progress, o.Terminal, o.ProgressEvery)
	if o.Terminal && o.Progress != nil {
		prog.total, prog.exact = countSlices(o.Inputs, o.Formats)
	}
	var done []result
	var werr error
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for r := range results {
			if r.err != nil {
				if werr == nil {
					werr = r.err
				}
				continue
			}
			done = append(done, r)
			prog.done(1, len(r.rows))
		}
	}()

	groups := map[string]string{}
	stems := map[string]int{}
	prefixes := inputPrefixes(o.Inputs)
	seq := 0
	var walkErr error
	for k, in := range o.Inputs {
		root := in
		if st, err := os.Stat(in); err == nil && !st.IsDir() {
			root = filepath.Dir(in)
		}
		walkErr = ingest.Walk(ctx, o.Formats, in, o.MasksDir, func(it ingest.Item) error {
			id := ""
			if it.Meta != nil {
				id = it.Meta.Id
			}
			switch {
			case it.Err != nil || it.HU == nil || it.Meta == nil:
				sum.Failed++
				err := it.Err
				if err == nil {
					err = errors.New("no pixels")
				}
				if o.Warn != nil {
					fmt.Fprintf(o.Warn, "dataset: skipping %s %s: %v\n", in, id, err)
				}
				prog.done(1, 0)
				return nil
			case it.Mask == nil:
				sum.NoMask++
				prog.done(1, 0)
				return nil
			}
			stem := path.Join(prefixes[k], sanitize(id))
			if n := stems[stem]; n > 0 {
				stems[stem] = n + 1
				stem = fmt.Sprintf("%s~%d", stem, n+1)
			}
			stems[stem]++
			g := groupKey(o.Group, in, root, it)
			split, ok := groups[g]
			if !ok {
				split = splitOf(o.Seed, g, o.ValFraction)
				groups[g] = split
				if split == Val {
					sum.ValGroups++
				}
			}
			sum.Slices++
			if split == Val {
				sum.Val++
			} else {
				sum.Train++
			}
			select {
			case jobs <- job{seq: seq, item: it, input: in, stem: stem, group: g, split: split}:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			seq++
			return nil
		})
		if walkErr != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	close(results)
	<-collected
	prog.finish()
	sum.Groups = len(groups)
	if werr != nil {
		return sum, werr
	}
	if walkErr != nil {
		return sum, walkErr
	}
	if err := ctx.Err(); err != nil {
		return sum, context.Cause(ctx)
	}
	// Manifest rows in input order, copies in order.
	slices.SortFunc(done, func(a, b result) int { return a.seq - b.seq })
	var rows []Row
	for _, r := range done {
		rows = append(rows, r.rows...)
	}
	sum.Pairs = len(rows)
	if err := writeManifest(filepath.Join(o.Out, ManifestName), rows); err != nil {
		return sum, err
	}
	if err := o.writeConfig(sum); err != nil {
		return sum, err
	}
	return sum, nil
}

// write makes and writes the copies of one slice.
func (o *Options) write(j job, orig, aug *augment.Pipeline) ([]Row, error) {
	img := augment.FloatFromHU(j.item.HU)
	n := 1
	if j.split == Train {
		n += o.Copies
	}
	rows := make([]Row, 0, n)
	for c := range n {
		pl := orig
		if c > 0 {
			pl = aug
		}
		r := augment.NewRand(o.Seed, j.stem+"#"+strconv.Itoa(c))
		f, m, p, err := pl.Apply(img, j.item.Mask, r)
		if err != nil {
			return nil, fmt.Errorf("dataset: augmenting %s copy %d: %w", j.item.Meta.Id, c, err)
		}
		id := fmt.Sprintf("%s/%s_c%d", j.split, j.stem, c)
		if err := pngpair.Write(o.Out, id, augment.HUFromFloat(f), m); err != nil {
			return nil, fmt.Errorf("dataset: writing %s: %w", id, err)
		}
		meta := j.item.Meta
		rows = append(rows, Row{
			File: id + pngpair.ImageSuffix, Mask: id + pngpair.MaskSuffix,
			Source: meta.Source, Input: j.input, ID: meta.Id, Group: j.group, Label: meta.Label,
			Split: j.split, Copy: c, OrigRows: j.item.HU.Rows, OrigCols: j.item.HU.Cols,
			MaskPixels: m.Count(), Params: p,
		})
	}
	return rows, nil
}

func writeManifest(p string, rows []Row) error {
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("dataset: creating manifest: %w", err)
	}
	w := csv.NewWriter(f)
	_ = w.Write(ManifestHeader)
	for _, r := range rows {
		_ = w.Write(r.Record())
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("dataset: writing manifest: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("dataset: writing manifest: %w", err)
	}
	return nil
}

// configFile is dataset.json: the options that shape the output (no
// times or host names, so that a seed reproduces it too) and the summary.
type configFile struct {
	Inputs      []string       `json:"inputs"`
	MasksDir    string         `json:"masks_dir,omitempty"`
	Seed        uint64         `json:"seed"`
	Copies      int            `json:"copies"`
	ValFraction float64        `json:"val_fraction"`
	Size        int            `json:"size"`
	Group       string         `json:"group"`
	Augment     augment.Config `json:"augment"`
	Notes       string         `json:"notes"`
	Summary     *Summary       `json:"summary"`
}

func (o *Options) writeConfig(sum *Summary) error {
	c := configFile{Inputs: o.Inputs, MasksDir: o.MasksDir, Seed: o.Seed, Copies: o.Copies,
		ValFraction: o.ValFraction, Size: o.Size, Group: o.Group, Augment: o.Augment, Summary: sum,
		Notes: "copy 0 is the original resized to size (bilinear image, nearest mask); copies 1..N of training " +
			"slices run the resize and then the augment steps; validation slices get copy 0 only. Images are " +
			"16-bit PNG of HU+1024; brightness/contrast act on the windowed intensities and are mapped back to HU " +
			"through augment.window, so augmented HU lie within that window."}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.Out, ConfigName), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("dataset: writing %s: %w", ConfigName, err)
	}
	return nil
}

// sanitize makes a slice id safe as a relative path: each '/'-separated
// component keeps letters, digits, '.', '-' and '_' (others become '_'),
// and empty, "." and ".." components become "_".
func sanitize(id string) string {
	parts := strings.Split(id, "/")
	for i, p := range parts {
		b := []byte(p)
		for k, c := range b {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
				b[k] = '_'
			}
		}
		p = string(b)
		if p == "" || p == "." || p == ".." {
			p = "_"
		}
		parts[i] = p
	}
	return strings.Join(parts, "/")
}

// inputPrefixes names each input's output folder: its base name (without
// extension for a file), made unique with "-2", "-3"...
func inputPrefixes(inputs []string) []string {
	out := make([]string, len(inputs))
	seen := map[string]int{}
	for i, in := range inputs {
		base := in
		if abs, err := filepath.Abs(in); err == nil {
			base = abs
		}
		base = filepath.Base(base)
		if st, err := os.Stat(in); err == nil && !st.IsDir() {
			base = strings.TrimSuffix(base, filepath.Ext(base))
		}
		base = sanitize(strings.ReplaceAll(base, "/", "_"))
		seen[base]++
		if n := seen[base]; n > 1 {
			base = fmt.Sprintf("%s-%d", base, n)
		}
		out[i] = base
	}
	return out
}

// groupKey returns the key that keeps a patient's slices on one side.
func groupKey(mode, input, root string, it ingest.Item) string {
	m := it.Meta
	dir := "dir:" + filepath.ToSlash(filepath.Join(root, path.Dir(m.Id)))
	switch mode {
	case GroupSlice:
		return "slice:" + input + "|" + m.Id
	case GroupDir:
		return dir
	}
	switch m.Source {
	case "pkl":
		return "row:" + input + "|" + m.Id
	case "dicom":
		if m.StudyUid != "" {
			return "study:" + m.StudyUid
		}
		if m.SeriesUid != "" {
			return "series:" + m.SeriesUid
		}
	}
	return dir
}

// splitOf puts a group in Val when a hash of the seed and the group key,
// read as a number in [0,1), is below frac. A group's side depends only
// on the seed and its key, not on the other groups, so adding data never
// moves a patient across the split; the validation share is frac only on
// average.
func splitOf(seed uint64, group string, frac float64) string {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	h.Write(b[:])
	h.Write([]byte(group))
	u := float64(mix64(h.Sum64())>>11) / (1 << 53)
	if u < frac {
		return Val
	}
	return Train
}

// mix64 is the splitmix64 finaliser, spreading FNV's bits.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
