package segment_test

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/segment"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/rs/zerolog"
)

// recModel doubles every value, records the batch size of each call, and
// fails a call whose input holds a NaN.
type recModel struct {
	mu    sync.Mutex
	sizes []int
	delay time.Duration
}

func (m *recModel) Provider() string { return "rec" }

func (m *recModel) Run(in []float32, n int) ([]float32, error) {
	m.mu.Lock()
	m.sizes = append(m.sizes, n)
	m.mu.Unlock()
	time.Sleep(m.delay)
	out := make([]float32, len(in))
	for i, v := range in {
		if math.IsNaN(float64(v)) {
			return nil, errors.New("rec: NaN input")
		}
		out[i] = 2 * v
	}
	return out, nil
}

func (m *recModel) calls() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]int(nil), m.sizes...)
}

// image returns px values that identify caller k.
func image(k, px int) []float32 {
	v := make([]float32, px)
	for i := range v {
		v[i] = float32(k*1000 + i)
	}
	return v
}

func TestBatcherGroupsConcurrentCallers(t *testing.T) {
	const px, callers = 6, 8
	m := &recModel{}
	b, err := segment.NewBatcher(m, segment.BatchOptions{MaxBatch: 4, MaxWait: 5 * time.Second, Pixels: px})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	errs := make([]error, callers)
	for k := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := image(k, px)
			out, err := b.Run(in, 1)
			if err == nil {
				for i := range in {
					if out[i] != 2*in[i] {
						err = fmt.Errorf("caller %d pixel %d: %v, want %v", k, i, out[i], 2*in[i])
						break
					}
				}
			}
			errs[k] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// With a wait far longer than the callers take to arrive, the eight
	// requests form exactly two full batches.
	if got := m.calls(); !slices.Equal(got, []int{4, 4}) {
		t.Fatalf("model calls %v, want [4 4]", got)
	}
	st := b.Stats()
	if st.Requests != callers || st.Images != callers || st.Batches != 2 || st.MeanBatch() != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBatcherMaxWait(t *testing.T) {
	const px = 3
	m := &recModel{}
	b, err := segment.NewBatcher(m, segment.BatchOptions{MaxBatch: 8, MaxWait: 20 * time.Millisecond, Pixels: px})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	start := time.Now()
	out, err := b.Run(image(1, px), 1)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 20*time.Millisecond || d > 5*time.Second {
		t.Fatalf("a lone request returned after %v, want the 20ms wait", d)
	}
	if out[2] != 2*1002 {
		t.Fatalf("output %v", out)
	}
	if got := m.calls(); !slices.Equal(got, []int{1}) {
		t.Fatalf("model calls %v, want [1]", got)
	}
}

func TestBatcherZeroWaitAndLargeRequests(t *testing.T) {
	const px = 2
	m := &recModel{}
	b, err := segment.NewBatcher(m, segment.BatchOptions{MaxBatch: 2, Pixels: px})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// A TTA request of 3 images exceeds MaxBatch and runs alone, whole.
	in := append(append(image(1, px), image(2, px)...), image(3, px)...)
	out, err := b.Run(in, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if out[i] != 2*in[i] {
			t.Fatalf("pixel %d: %v want %v", i, out[i], 2*in[i])
		}
	}
	if got := m.calls(); !slices.Equal(got, []int{3}) {
		t.Fatalf("model calls %v, want [3]", got)
	}
	if _, err := b.Run(in, 2); err == nil {
		t.Fatal("3 images' values accepted as 2 images")
	}
}

func TestBatcherIsolatesFailures(t *testing.T) {
	const px = 4
	m := &recModel{}
	b, err := segment.NewBatcher(m, segment.BatchOptions{MaxBatch: 3, MaxWait: 5 * time.Second, Pixels: px})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for k := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := image(k, px)
			if k == 1 {
				in[2] = float32(math.NaN())
			}
			_, errs[k] = b.Run(in, 1)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[2] != nil || errs[1] == nil {
		t.Fatalf("errors %v: want only caller 1's", errs)
	}
	// One failed batch of 3, then each request alone.
	if got := m.calls(); !slices.Equal(got, []int{3, 1, 1, 1}) {
		t.Fatalf("model calls %v, want [3 1 1 1]", got)
	}
}

func TestBatcherClose(t *testing.T) {
	b, err := segment.NewBatcher(&recModel{}, segment.BatchOptions{MaxBatch: 2, Pixels: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal("second close:", err)
	}
	if _, err := b.Run([]float32{1}, 1); !errors.Is(err, segment.ErrBatcherClosed) {
		t.Fatalf("run after close: %v", err)
	}
}

func TestNewBatcherRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    segment.Model
		o    segment.BatchOptions
	}{
		{"nil model", nil, segment.BatchOptions{MaxBatch: 1, Pixels: 1}},
		{"zero batch", &recModel{}, segment.BatchOptions{MaxBatch: 0, Pixels: 1}},
		{"negative wait", &recModel{}, segment.BatchOptions{MaxBatch: 1, MaxWait: -1, Pixels: 1}},
		{"no pixels", &recModel{}, segment.BatchOptions{MaxBatch: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := segment.NewBatcher(tc.m, tc.o); !errors.Is(err, segment.ErrBatchOptions) {
				t.Fatalf("got %v, want ErrBatchOptions", err)
			}
		})
	}
}

// TestBatcherMatchesSessionRuns checks that batched outputs from the real
// ONNX Runtime session equal one-image runs of the same inputs.
func TestBatcherMatchesSessionRuns(t *testing.T) {
	card, err := model.LoadCard("testdata/tiny")
	if err != nil {
		t.Fatal(err)
	}
	sess, err := infer.Open(card, infer.Options{}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	px := card.Input.Height * card.Input.Width
	b, err := segment.NewBatcher(sess, segment.BatchOptions{MaxBatch: 4, MaxWait: 5 * time.Second, Pixels: px})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	inputs := make([][]float32, 4)
	for k := range inputs {
		inputs[k] = make([]float32, px)
		for i := range inputs[k] {
			inputs[k][i] = float32(math.Sin(float64(i*(k+1)) / 97))
		}
	}
	outs := make([][]float32, 4)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for k := range inputs {
		wg.Add(1)
		go func() { defer wg.Done(); outs[k], errs[k] = b.Run(inputs[k], 1) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Batches != 1 {
		t.Fatalf("%d model calls, want 1 batch of 4", st.Batches)
	}
	for k := range inputs {
		want, err := sess.Run(inputs[k], 1)
		if err != nil {
			t.Fatal(err)
		}
		for i := range want {
			if d := math.Abs(float64(want[i] - outs[k][i])); d > 1e-5 {
				t.Fatalf("image %d pixel %d: batched %v, alone %v", k, i, outs[k][i], want[i])
			}
		}
	}
}
