package dataset_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/internal/dataset"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/preprocess/augment"
)

// pngOnly is the PNG-pair reader alone, so these tests do not depend on
// the other readers.
var pngOnly = []ingest.Format{{
	Name:  "png-pair",
	Match: func(name string, _ []byte) bool { return strings.HasSuffix(name, pngpair.ImageSuffix) },
	Read: func(ctx context.Context, path string, o ingest.Options, fn ingest.EmitFunc) error {
		return pngpair.Read(ctx, path, o.Root, fn)
	},
}}

const (
	noduleHU = 40
	lungHU   = -800
)

// phantoms writes n side×side PNG pairs, perSlices per patient folder
// pNNN, each a disc of noduleHU at a random place on noisy lung.
func phantoms(t testing.TB, dir string, n, perPatient, side int) {
	t.Helper()
	r := rand.New(rand.NewPCG(42, 0))
	for i := range n {
		hu := imgx.NewHU(side, side)
		m := imgx.NewMask(side, side)
		cx, cy := 10+r.Float64()*float64(side-20), 10+r.Float64()*float64(side-20)
		rad := 3 + r.Float64()*float64(side)/10
		for y := range side {
			for x := range side {
				k := y*side + x
				hu.Pix[k] = int16(lungHU + r.IntN(60) - 30)
				if (float64(x)-cx)*(float64(x)-cx)+(float64(y)-cy)*(float64(y)-cy) <= rad*rad {
					hu.Pix[k] = noduleHU
					m.Pix[k] = 1
				}
			}
		}
		id := fmt.Sprintf("p%03d/s%04d", i/perPatient, i)
		if err := pngpair.Write(dir, id, hu, m); err != nil {
			t.Fatal(err)
		}
	}
}

// treeHash hashes every file's relative path and bytes.
func treeHash(t testing.TB, dir string) (string, int) {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	h := sha256.New()
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.ToSlash(rel), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), len(files)
}

func readManifest(t testing.TB, dir string) []map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, dataset.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(recs[0], ",") != strings.Join(dataset.ManifestHeader, ",") {
		t.Fatalf("manifest header %v", recs[0])
	}
	var rows []map[string]string
	for _, r := range recs[1:] {
		m := map[string]string{}
		for i, k := range recs[0] {
			m[k] = r[i]
		}
		rows = append(rows, m)
	}
	return rows
}

func options(in, out string, seed uint64, workers int) dataset.Options {
	return dataset.Options{
		Out: out, Inputs: []string{in}, Formats: pngOnly, Copies: 4, Seed: seed, Size: 32,
		Augment: augment.Config{Window: augment.LungWindow, Steps: augment.Default(0, augment.LungWindow).Steps},
		Workers: workers,
	}
}

// TestBuild708 grows 708 phantom slices to 3,540 pairs (the report's
// numbers), reproducibly under a seed and whatever the worker count.
func TestBuild708(t *testing.T) {
	in := t.TempDir()
	phantoms(t, in, 708, 12, 32)
	tmp := t.TempDir()
	ctx := context.Background()
	var hashes []string
	for k, c := range []struct {
		seed    uint64
		workers int
	}{{7, 8}, {7, 1}, {8, 8}} {
		if testing.Short() && c.workers == 1 {
			continue // writing 7,080 files is slow on a busy disk
		}
		out := filepath.Join(tmp, fmt.Sprint(k))
		start := time.Now()
		sum, err := dataset.Build(ctx, options(in, out, c.seed, c.workers))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("seed %d, %d workers: %+v in %v", c.seed, c.workers, *sum, time.Since(start).Round(time.Millisecond))
		if sum.Slices != 708 || sum.Train != 708 || sum.Pairs != 3540 || sum.Groups != 59 || sum.Failed != 0 || sum.NoMask != 0 {
			t.Fatalf("summary %+v, want 708 slices in 59 groups, 3540 pairs", *sum)
		}
		h, n := treeHash(t, out)
		if n != 2*3540+2 {
			t.Fatalf("%d files, want 7080 PNGs, the manifest and dataset.json", n)
		}
		hashes = append(hashes, h)
		if k > 0 {
			continue
		}
		rows := readManifest(t, out)
		if len(rows) != 3540 {
			t.Fatalf("%d manifest rows, want 3540", len(rows))
		}
		copies := map[string]int{}
		for i, r := range rows {
			copies[r["copy"]]++
			if r["split"] != dataset.Train || r["source"] != "png" || r["rows"] != "32" {
				t.Fatalf("row %d: %v", i, r)
			}
			if want := fmt.Sprint(i % 5); r["copy"] != want {
				t.Fatalf("row %d is copy %s, want %s (input order, copies in order)", i, r["copy"], want)
			}
			if r["copy"] == "0" && r["steps"] != "resize" {
				t.Fatalf("copy 0 steps %q, want resize only", r["steps"])
			}
			if r["copy"] != "0" && (r["angle_deg"] == "" || r["elastic_sigma"] != "10" || r["contrast"] == "") {
				t.Fatalf("augmented row without parameters: %v", r)
			}
		}
		for c := 0; c < 5; c++ {
			if copies[fmt.Sprint(c)] != 708 {
				t.Fatalf("copy counts %v", copies)
			}
		}
		// Copy 0 at the input's size is the input, byte for byte in HU.
		orig, err := pngpair.ReadHU(filepath.Join(in, "p003", "s0040_image.png"))
		if err != nil {
			t.Fatal(err)
		}
		c0, err := pngpair.ReadHU(filepath.Join(out, "train", filepath.Base(in), "p003", "s0040_c0_image.png"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(orig.EncodeInt16(), c0.EncodeInt16()) {
			t.Fatal("copy 0 differs from the input")
		}
	}
	if !testing.Short() && hashes[0] != hashes[1] {
		t.Fatal("same seed, different worker count: output trees differ")
	}
	if hashes[0] == hashes[len(hashes)-1] {
		t.Fatal("another seed gave the same output tree")
	}
}

// TestSplitByPatient checks that no patient folder is on both sides,
// that validation slices get copy 0 only, and that augmented pairs stay
// aligned (the nodule's HU inside the mask, lung outside).
func TestSplitByPatient(t *testing.T) {
	in := t.TempDir()
	phantoms(t, in, 60, 3, 48)
	out := filepath.Join(t.TempDir(), "ds")
	o := options(in, out, 3, 2)
	o.ValFraction = 0.3
	o.Copies = 2
	o.Size = 48
	sum, err := dataset.Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Groups != 20 || sum.ValGroups == 0 || sum.ValGroups == 20 || sum.Val+sum.Train != 60 || sum.Val != 3*sum.ValGroups {
		t.Fatalf("summary %+v", *sum)
	}
	if sum.Pairs != sum.Train*3+sum.Val {
		t.Fatalf("%d pairs, want 3 per training slice and 1 per validation slice: %+v", sum.Pairs, *sum)
	}
	rows := readManifest(t, out)
	side := map[string]string{}
	empty := 0
	for _, r := range rows {
		patient := strings.Split(r["id"], "/")[0]
		if s, ok := side[patient]; ok && s != r["split"] {
			t.Fatalf("patient %s is in both %s and %s", patient, s, r["split"])
		}
		side[patient] = r["split"]
		if r["group"] != "dir:"+filepath.ToSlash(filepath.Join(in, patient)) {
			t.Fatalf("group %q for %s", r["group"], r["id"])
		}
		if r["split"] == dataset.Val && r["copy"] != "0" {
			t.Fatalf("validation slice with an augmented copy: %v", r)
		}
		if !strings.HasPrefix(r["file"], r["split"]+"/") {
			t.Fatalf("file %s not under its split", r["file"])
		}
		hu, err := pngpair.ReadHU(filepath.Join(out, r["file"]))
		if err != nil {
			t.Fatal(err)
		}
		m, err := pngpair.ReadMask(filepath.Join(out, r["mask"]))
		if err != nil {
			t.Fatal(err)
		}
		if strconv.Itoa(m.Count()) != r["mask_pixels"] {
			t.Fatalf("%s: %d mask pixels, manifest says %s", r["mask"], m.Count(), r["mask_pixels"])
		}
		var in, outside, nin, nout float64
		for i, v := range hu.Pix {
			if m.Pix[i] != 0 {
				in += float64(v)
				nin++
			} else {
				outside += float64(v)
				nout++
			}
		}
		if nin == 0 {
			// A small nodule near the edge may leave the image.
			empty++
			continue
		}
		// Edges blur a little; the means must still sit near the two
		// values (intensity changes move them by at most ~0.2 window).
		if in/nin < -300 || outside/nout > -500 {
			t.Fatalf("%s: mean HU %.0f inside the mask and %.0f outside: image and mask misaligned", r["file"], in/nin, outside/nout)
		}
	}
	if empty > len(rows)/20 {
		t.Fatalf("%d of %d masks empty", empty, len(rows))
	}
}

func TestBadInputsAreCountedAndSkipped(t *testing.T) {
	in := t.TempDir()
	phantoms(t, in, 5, 5, 32)
	if err := os.WriteFile(filepath.Join(in, "p000", "broken_image.png"), []byte("not a png"), 0o644); err != nil {
		t.Fatal(err)
	}
	hu := imgx.NewHU(32, 32)
	if err := pngpair.Write(in, "p000/nomask", hu, nil); err != nil {
		t.Fatal(err)
	}
	var warn bytes.Buffer
	o := options(in, filepath.Join(t.TempDir(), "o"), 1, 1)
	o.Warn = &warn
	sum, err := dataset.Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Slices != 5 || sum.Failed != 1 || sum.NoMask != 1 || sum.Pairs != 25 {
		t.Fatalf("summary %+v", *sum)
	}
	if !strings.Contains(warn.String(), "broken") {
		t.Fatalf("warnings %q do not name the broken file", warn.String())
	}
}

func TestOptionErrors(t *testing.T) {
	in := t.TempDir()
	phantoms(t, in, 1, 1, 32)
	full := t.TempDir()
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	base := options(in, filepath.Join(t.TempDir(), "o"), 1, 1)
	cases := map[string]struct {
		mod  func(o *dataset.Options)
		want error
	}{
		"out not empty":   {func(o *dataset.Options) { o.Out = full }, dataset.ErrOutNotEmpty},
		"no inputs":       {func(o *dataset.Options) { o.Inputs = nil }, dataset.ErrOptions},
		"fraction":        {func(o *dataset.Options) { o.ValFraction = 1.5 }, dataset.ErrOptions},
		"negative copies": {func(o *dataset.Options) { o.Copies = -1 }, dataset.ErrOptions},
		"group":           {func(o *dataset.Options) { o.Group = "patient" }, dataset.ErrOptions},
		"resize step": {func(o *dataset.Options) {
			o.Augment.Steps = []augment.Step{{Op: "resize", Rows: 8, Cols: 8}}
		}, dataset.ErrOptions},
		"bad step": {func(o *dataset.Options) {
			o.Augment.Steps = []augment.Step{{Op: "rotate", MaxDeg: -1}}
		}, augment.ErrConfig},
	}
	for name, c := range cases {
		o := base
		c.mod(&o)
		if _, err := dataset.Build(context.Background(), o); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", name, err, c.want)
		}
	}
}

func TestProgress(t *testing.T) {
	in := t.TempDir()
	phantoms(t, in, 6, 2, 32)
	for _, tty := range []bool{false, true} {
		var buf bytes.Buffer
		o := options(in, filepath.Join(t.TempDir(), "o"), 1, 1)
		o.Progress, o.Terminal, o.ProgressEvery = &buf, tty, time.Nanosecond
		if _, err := dataset.Build(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		s := buf.String()
		if tty {
			if !strings.Contains(s, "\r") || !strings.Contains(s, "6/6 slices") || !strings.Contains(s, "100%") {
				t.Fatalf("terminal progress %q", s)
			}
		} else if strings.Contains(s, "\r") || !strings.Contains(s, "dataset: 6 slices, 30 pairs written") {
			t.Fatalf("plain progress %q", s)
		}
	}
}

func TestContextCancel(t *testing.T) {
	in := t.TempDir()
	phantoms(t, in, 4, 2, 32)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	out := filepath.Join(t.TempDir(), "o")
	if _, err := dataset.Build(ctx, options(in, out, 1, 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(filepath.Join(out, dataset.ManifestName)); err == nil {
		t.Fatal("a cancelled build wrote a manifest")
	}
}

// TestLIDC builds a small set from three real patients' crops, one input
// folder each, and checks that the groups are the patients.
func TestLIDC(t *testing.T) {
	data := testenv.SharedData(t)
	root := filepath.Join(data, "lidc", "ctslicing_vois_hu")
	patients := []string{"LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0006"}
	var inputs []string
	for _, p := range patients {
		inputs = append(inputs, filepath.Join(root, p))
	}
	out := filepath.Join(t.TempDir(), "o")
	o := options("", out, 1, 2)
	o.Inputs, o.Copies, o.ValFraction = inputs, 1, 0.5
	sum, err := dataset.Build(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", *sum)
	if sum.Groups != 3 || sum.Failed != 0 || sum.Slices == 0 {
		t.Fatalf("summary %+v", *sum)
	}
	for _, r := range readManifest(t, out) {
		if !strings.HasPrefix(r["file"], r["split"]+"/LIDC-IDRI-") || r["rows"] != "32" || r["group"] != "dir:"+filepath.ToSlash(filepath.Join(root, strings.Split(r["file"], "/")[1])) {
			t.Fatalf("row %v", r)
		}
	}
}

// BenchmarkBuild512 builds a set from 20 phantom 512×512 slices at
// 256×256 with 4 augmented copies each (100 pairs per op); pairs/s is the
// throughput with Options.Workers' default.
func BenchmarkBuild512(b *testing.B) {
	in := b.TempDir()
	phantoms(b, in, 20, 5, 512)
	k := 0
	for b.Loop() {
		o := options(in, filepath.Join(b.TempDir(), fmt.Sprint(k)), 1, 0)
		o.Size = 256
		k++
		sum, err := dataset.Build(context.Background(), o)
		if err != nil || sum.Pairs != 100 {
			b.Fatal(sum, err)
		}
	}
	b.ReportMetric(float64(100*b.N)/b.Elapsed().Seconds(), "pairs/s")
}
