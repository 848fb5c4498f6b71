package infer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/rs/zerolog"
)

const tinyDir = "../testdata/tiny"

// TestMain loads ONNX Runtime, fetching it when missing. Without it every
// test here fails: none of them skips.
func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	err := ortlib.Init(ctx, zerolog.New(os.Stderr).Level(zerolog.WarnLevel))
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loading onnx runtime:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func tinyCard(t testing.TB) *model.Card {
	t.Helper()
	c, err := model.LoadCard(tinyDir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func open(t testing.TB, c *model.Card, o Options) *Session {
	t.Helper()
	s, err := Open(c, o, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// parity is the content of testdata/tiny/parity.bin (see the script that
// wrote it, segment/testdata/make_tiny_unet.py).
type parity struct {
	n, h, w int
	input   []float32 // float32(q)/255
	logits  []float32 // PyTorch's output
}

func readParity(t testing.TB) parity {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(tinyDir, "parity.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 12 || string(b[:8]) != "LSPARITY" {
		t.Fatal("parity.bin: bad magic")
	}
	hl := int(binary.LittleEndian.Uint32(b[8:12]))
	if 12+hl > len(b) {
		t.Fatalf("parity.bin: header length %d past end", hl)
	}
	var hdr struct {
		Inputs struct {
			DType string `json:"dtype"`
			Shape []int  `json:"shape"`
			Scale int    `json:"scale"`
		} `json:"inputs"`
		Outputs struct {
			DType string `json:"dtype"`
			Shape []int  `json:"shape"`
			Kind  string `json:"kind"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(b[12:12+hl], &hdr); err != nil {
		t.Fatal(err)
	}
	is, os_ := hdr.Inputs.Shape, hdr.Outputs.Shape
	if hdr.Inputs.DType != "uint8" || hdr.Outputs.DType != "float32" || hdr.Outputs.Kind != "logits" ||
		len(is) != 4 || fmt.Sprint(is) != fmt.Sprint(os_) || is[1] != 1 || hdr.Inputs.Scale != 255 {
		t.Fatalf("parity.bin: unexpected header %+v", hdr)
	}
	p := parity{n: is[0], h: is[2], w: is[3]}
	cnt := p.n * p.h * p.w
	r := bytes.NewReader(b[12+hl:])
	q := make([]uint8, cnt)
	p.logits = make([]float32, cnt)
	if _, err := io.ReadFull(r, q); err != nil {
		t.Fatal(err)
	}
	if err := binary.Read(r, binary.LittleEndian, p.logits); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 0 {
		t.Fatalf("parity.bin: %d trailing bytes", r.Len())
	}
	p.input = make([]float32, cnt)
	for i, v := range q {
		p.input[i] = float32(v) / 255
	}
	return p
}

func maxAbsDiff(a, b []float32) (float64, int) {
	worst, at := 0.0, -1
	for i := range a {
		if d := math.Abs(float64(a[i]) - float64(b[i])); d > worst || math.IsNaN(d) {
			worst, at = d, i
			if math.IsNaN(d) {
				return math.Inf(1), i
			}
		}
	}
	return worst, at
}

// TestParityWithPyTorch checks ONNX Runtime in Go against PyTorch, on the
// raw logits and on the probabilities Run returns.
func TestParityWithPyTorch(t *testing.T) {
	p := readParity(t)
	card := tinyCard(t)
	if p.h != card.Input.Height || p.w != card.Input.Width {
		t.Fatalf("parity %d×%d, card %d×%d", p.h, p.w, card.Input.Height, card.Input.Width)
	}
	raw := *card
	raw.Output = "probabilities" // Run then returns the logits untouched
	for _, threads := range []int{1, 2} {
		t.Run(fmt.Sprintf("threads=%d", threads), func(t *testing.T) {
			logits, err := open(t, &raw, Options{IntraOpThreads: threads}).Run(p.input, p.n)
			if err != nil {
				t.Fatal(err)
			}
			d, at := maxAbsDiff(logits, p.logits)
			t.Logf("logits: max |ORT-PyTorch| = %.3g", d)
			if d > 1e-4 {
				t.Fatalf("logit %d: ORT %v, PyTorch %v (diff %.3g > 1e-4)", at, logits[at], p.logits[at], d)
			}

			probs, err := open(t, card, Options{IntraOpThreads: threads}).Run(p.input, p.n)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]float32, len(p.logits))
			for i, v := range p.logits {
				want[i] = float32(1 / (1 + math.Exp(-float64(v))))
			}
			if d, at := maxAbsDiff(probs, want); d > 1e-4 {
				t.Fatalf("probability %d: got %v, want %v", at, probs[at], want[at])
			}
			// The untrained model still makes a mask that is neither empty
			// nor full, so thresholding downstream is exercised.
			var fg int
			for _, v := range probs {
				if float64(v) >= card.Threshold {
					fg++
				}
			}
			if fg == 0 || fg == len(probs) {
				t.Errorf("mask has %d of %d pixels set", fg, len(probs))
			}
		})
	}
}

// batchInputs builds four distinct images: the parity image, seeded noise,
// the parity image mirrored, and a constant image.
func batchInputs(p parity) [][]float32 {
	px := p.h * p.w
	r := rand.New(rand.NewPCG(7, 11))
	imgs := make([][]float32, 4)
	for k := range imgs {
		imgs[k] = make([]float32, px)
	}
	copy(imgs[0], p.input[:px])
	for i := range imgs[1] {
		imgs[1][i] = r.Float32()
	}
	for y := 0; y < p.h; y++ {
		for x := 0; x < p.w; x++ {
			imgs[2][y*p.w+x] = p.input[y*p.w+p.w-1-x]
		}
	}
	for i := range imgs[3] {
		imgs[3][i] = 0.42
	}
	return imgs
}

// TestBatchMatchesSingle checks the batch layout: image k of a batch run
// gives what it gives alone, and image 0 matches PyTorch.
func TestBatchMatchesSingle(t *testing.T) {
	p := readParity(t)
	card := tinyCard(t)
	raw := *card
	raw.Output = "probabilities"
	s := open(t, &raw, Options{})
	imgs := batchInputs(p)
	px := p.h * p.w
	var batch []float32
	for _, im := range imgs {
		batch = append(batch, im...)
	}
	got, err := s.Run(batch, len(imgs))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(batch) {
		t.Fatalf("got %d values, want %d", len(got), len(batch))
	}
	for k, im := range imgs {
		one, err := s.Run(im, 1)
		if err != nil {
			t.Fatal(err)
		}
		if d, at := maxAbsDiff(got[k*px:(k+1)*px], one); d > 1e-5 {
			t.Fatalf("image %d pixel %d: batch %v, alone %v", k, at, got[k*px+at], one[at])
		}
	}
	if d, _ := maxAbsDiff(got[:px], p.logits[:px]); d > 1e-4 {
		t.Fatalf("batch image 0 differs from PyTorch by %.3g", d)
	}
	// Distinct inputs must give distinct outputs, or the test above is
	// comparing a constant.
	if d, _ := maxAbsDiff(got[:px], got[2*px:3*px]); d < 1e-3 {
		t.Fatalf("mirrored image gives the same output (diff %.3g)", d)
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	s := open(t, tinyCard(t), Options{})
	h, w := s.Size()
	px := h * w
	withAt := func(n, i int, v float32) []float32 {
		in := make([]float32, n*px)
		in[i] = v
		return in
	}
	cases := []struct {
		name string
		in   []float32
		n    int
		msg  string
	}{
		{"zero batch", nil, 0, "batch of 0"},
		{"negative batch", nil, -2, "batch of -2"},
		{"huge batch", nil, MaxBatch + 1, "batch of"},
		{"short", make([]float32, px-1), 1, "want 65536"},
		{"long", make([]float32, 2*px+1), 2, "want 131072"},
		{"nan", withAt(2, px+3*w+5, float32(math.NaN())), 2, "NaN in image 1 at x=5 y=3"},
		{"inf", withAt(1, 7, float32(math.Inf(-1))), 1, "-Inf in image 0 at x=7 y=0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := s.Run(c.in, c.n)
			if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v (out %d values), want ErrInput mentioning %q", err, len(out), c.msg)
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	good := tinyCard(t)
	// A copy of the model whose card carries another checksum.
	tamperedDir := t.TempDir()
	mb, err := os.ReadFile(good.Path())
	if err != nil {
		t.Fatal(err)
	}
	mb[len(mb)-1] ^= 0xff
	os.WriteFile(filepath.Join(tamperedDir, model.ModelFile), mb, 0o644)
	tampered := *good
	tampered.Dir = tamperedDir

	with := func(f func(*model.Card)) *model.Card {
		c := *good
		f(&c)
		return &c
	}
	cases := []struct {
		name string
		card *model.Card
		opts Options
		want error
		msg  string
	}{
		{"nil card", nil, Options{}, ErrOptions, "nil card"},
		{"unknown provider", good, Options{Provider: "rocm"}, ErrOptions, `"rocm"`},
		{"negative threads", good, Options{IntraOpThreads: -1}, ErrOptions, "negative"},
		{"negative device", good, Options{Provider: "cuda", DeviceID: -1}, ErrOptions, "negative"},
		{"checksum", &tampered, Options{}, model.ErrChecksum, "sha256"},
		{"input size", with(func(c *model.Card) { c.Input.Height, c.Input.Width = 128, 128 }), Options{}, ErrModel, "want [N 1 128 128]"},
		{"input name", with(func(c *model.Card) { c.InputName = "image" }), Options{}, ErrModel, `no input "image" (model has input)`},
		{"output name", with(func(c *model.Card) { c.OutputName = "mask" }), Options{}, ErrModel, `no output "mask" (model has logits)`},
		{"missing file", with(func(c *model.Card) { c.Dir = t.TempDir() }), Options{}, os.ErrNotExist, "verifying model"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Open(c.card, c.opts, zerolog.Nop())
			if err == nil {
				s.Close()
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %v mentioning %q", err, c.want, c.msg)
			}
		})
	}
}

// TestProviderFallback asks for GPU providers on a machine whose ONNX
// Runtime has no GPU provider libraries: Open must warn, name the provider
// and the error, and hand back a working CPU session.
func TestProviderFallback(t *testing.T) {
	p := readParity(t)
	card := tinyCard(t)
	want, err := open(t, card, Options{}).Run(p.input, p.n)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		provider string
		warned   []string // providers that must each have a warning
	}{
		{"cuda", []string{"cuda"}},
		{"tensorrt", []string{"tensorrt", "cuda"}},
		{" CUDA ", []string{"cuda"}},
	}
	for _, c := range cases {
		t.Run(c.provider, func(t *testing.T) {
			var buf bytes.Buffer
			s, err := Open(card, Options{Provider: c.provider, FP16: true}, zerolog.New(&buf))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.Provider() != ProviderCPU {
				t.Fatalf("Provider() = %q, want cpu (this machine has no GPU provider libraries)", s.Provider())
			}
			warned := map[string]bool{}
			dec := json.NewDecoder(&buf)
			for dec.More() {
				var e map[string]any
				if err := dec.Decode(&e); err != nil {
					t.Fatal(err)
				}
				if e["level"] == "warn" {
					if e["error"] == nil || e["error"] == "" {
						t.Errorf("warning without error: %v", e)
					}
					warned[fmt.Sprint(e["provider"])] = true
				}
			}
			for _, p := range c.warned {
				if !warned[p] {
					t.Errorf("no warning for provider %s; log:\n%s", p, buf.String())
				}
			}
			got, err := s.Run(p.input, p.n)
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := maxAbsDiff(got, want); d > 1e-6 {
				t.Fatalf("fallback session differs from cpu session by %.3g", d)
			}
		})
	}
}

func TestConcurrentRun(t *testing.T) {
	p := readParity(t)
	s := open(t, tinyCard(t), Options{})
	imgs := batchInputs(p)
	want := make([][]float32, len(imgs))
	for k, im := range imgs {
		var err error
		if want[k], err = s.Run(im, 1); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(imgs))
	for k := range imgs {
		wg.Go(func() {
			for range 3 {
				got, err := s.Run(imgs[k], 1)
				if err != nil {
					errs <- err
					return
				}
				if d, _ := maxAbsDiff(got, want[k]); d > 1e-6 {
					errs <- fmt.Errorf("image %d: concurrent result differs by %.3g", k, d)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestClose(t *testing.T) {
	s, err := Open(tinyCard(t), Options{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	h, w := s.Size()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Run(make([]float32, h*w), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: got %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestSigmoid(t *testing.T) {
	cases := []struct{ x, want float32 }{
		{0, 0.5},
		{2, 0.880797},
		{-2, 0.119203},
		{100, 1},
		{-100, 3.720076e-44},
		{float32(math.Inf(1)), 1},
		{float32(math.Inf(-1)), 0},
	}
	for _, c := range cases {
		got := sigmoid(c.x)
		if math.Abs(float64(got-c.want)) > 1e-6 || math.IsNaN(float64(got)) {
			t.Errorf("sigmoid(%v) = %v, want %v", c.x, got, c.want)
		}
	}
}

// BenchmarkRun times Run on the tiny model:
//
//	go test -run '^$' -bench Run -benchtime 3s ./segment/infer/
func BenchmarkRun(b *testing.B) {
	card := tinyCard(b)
	p := readParity(b)
	px := p.h * p.w
	for _, threads := range []int{1, 2} {
		s := open(b, card, Options{IntraOpThreads: threads})
		for _, n := range []int{1, 4} {
			in := make([]float32, 0, n*px)
			for range n {
				in = append(in, p.input[:px]...)
			}
			b.Run(fmt.Sprintf("batch=%d/threads=%d", n, threads), func(b *testing.B) {
				for b.Loop() {
					if _, err := s.Run(in, n); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(b.N*n), "ms/image")
			})
		}
	}
}

func TestSpinningIsOffUnlessAsked(t *testing.T) {
	for _, spin := range []bool{false, true} {
		so, err := sessionOptions(Options{IntraOpThreads: 2, Spin: spin})
		if err != nil {
			t.Fatal(err)
		}
		has, err := so.HasSessionConfigEntry(spinKey)
		if err != nil {
			t.Fatal(err)
		}
		if has == spin {
			t.Errorf("Spin %v: %s set = %v", spin, spinKey, has)
		}
		if has {
			if v, err := so.GetSessionConfigEntry(spinKey); err != nil || v != "0" {
				t.Errorf("Spin %v: %s = %q (%v), want 0", spin, spinKey, v, err)
			}
		}
		so.Destroy()
	}
}
