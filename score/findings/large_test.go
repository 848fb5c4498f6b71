package findings

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/objref"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
)

// TestStageLargeSeries: three 4096×4096 slices of one series, each with a
// predicted nodule. Their scores (2 MiB predicted masks) come by object
// reference, and each slice's entry in the series bucket, over the
// KV value limit, waits in the pixel bucket; once the series completes
// there is one nodule and the entries' objects are gone with them.
// Before, the KV put failed with "maximum payload exceeded" and the
// series never completed.
func TestStageLargeSeries(t *testing.T) {
	env := startBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	px, err := bus.PixelStore(ctx, env.JS, bus.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	count := func() int {
		infos, err := px.List(ctx)
		if errors.Is(err, jetstream.ErrNoObjectsFound) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, i := range infos {
			if strings.HasPrefix(i.Name, objref.KeyPrefix) {
				n++
			}
		}
		return n
	}
	col := collect(t, env.JS)
	st, _ := runStage(t, env.JS, Config{QuietPeriod: time.Hour}, nil)
	const side, n = 4096, 3
	for i := 0; i < n; i++ {
		pred := imgx.NewMask(side, side)
		for r := 2000; r < 2030; r++ {
			for c := 1000; c < 1030; c++ {
				pred.Pix[r*side+c] = 1
			}
		}
		meta := &lungsegv1.SliceMeta{Id: fmt.Sprintf("big/%d", i), ReplayId: "rl", Source: "dicom", StudyUid: "1.2.3", SeriesUid: "1.2.3.4",
			InstanceUid: fmt.Sprintf("1.2.3.4.%d", i), Rows: side, Cols: side, SpacingRowMm: 0.3, SpacingColMm: 0.3, SlicePosition: float64(i)}
		publishScore(t, env.JS, meta, "m", pred)
	}
	bustest.Eventually(t, 30*time.Second, "slice findings", func() bool { s, _, _ := col.counts(); return s == n })
	// The scores' objects and the series entries' (stored just after
	// the slice findings are published).
	bustest.Eventually(t, 10*time.Second, fmt.Sprintf("%d objects", 2*n), func() bool { return count() == 2*n })
	if k, err := st.FlushAll(ctx); err != nil || k != 1 {
		t.Fatalf("FlushAll: %d nodules, %v; want 1", k, err)
	}
	bustest.Eventually(t, 10*time.Second, "the finding", func() bool { _, f, _ := col.counts(); return f == 1 })
	if got := count(); got != n {
		t.Errorf("%d objects after completion, want %d (only the scores', kept for inspection)", got, n)
	}
}
