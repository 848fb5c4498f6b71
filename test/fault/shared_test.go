package fault

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/rs/zerolog"
)

// TestWorkersShareDurable runs three segment runners (as three processes
// would) on one durable consumer and shows that the work is shared and no
// message is processed twice.
func TestWorkersShareDurable(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n, workers = 1000, 3
	var mu sync.Mutex
	seen := map[string][]int{}
	per := make([]int, workers)
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range workers {
		p := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
			mu.Lock()
			seen[m.SliceID] = append(seen[m.SliceID], w)
			per[w]++
			mu.Unlock()
			time.Sleep(time.Millisecond) // a little work, so that pulls interleave
			return e.Emit(ctx, stage.Out{Subject: bus.MasksSubject("m"), Data: m.Data, SliceID: m.SliceID, ReplayID: m.ReplayID, Model: "m"})
		})
		r, err := stage.New(env.JS, stage.Config{Name: "segment", Durable: "segment-m", Stream: bus.StreamReady,
			FilterSubjects: []string{bus.ReadySubject("m")}, MaxAckPending: 32}, p, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Consumer(ctx); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(rctx) }()
	}
	for i := range n {
		id := fmt.Sprintf("s%04d", i)
		if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.ReadySubject("m"), Data: []byte(id), SliceID: id, ReplayID: "r", Model: "m"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	bustest.Eventually(t, time.Minute, "every message processed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	// Give a duplicate delivery the chance to show before stopping.
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	twice := 0
	for id, ws := range seen {
		if len(ws) != 1 {
			twice++
			t.Errorf("%s processed %d times (workers %v)", id, len(ws), ws)
		}
	}
	for w, c := range per {
		if c == 0 {
			t.Errorf("worker %d processed nothing: the work was not shared (%v)", w, per)
		}
	}
	st, err := env.JS.Stream(ctx, bus.StreamMasks)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != n {
		t.Errorf("MASKS holds %d messages, want %d", info.State.Msgs, n)
	}
	t.Logf("%d messages, per worker %v, processed twice %d", n, per, twice)
}
