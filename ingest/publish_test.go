package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// refusing records like recorder but refuses to publish the slices in
// bad with err.
type refusing struct {
	recorder
	bad map[string]error
}

func (r *refusing) Emit(ctx context.Context, o stage.Out) error {
	if err, ok := r.bad[o.SliceID]; ok && o.Subject == bus.SubjRaw {
		return err
	}
	return r.recorder.Emit(ctx, o)
}

// TestPublishFailureOfOneSlice: a folder of five pairs whose second slice
// cannot be published (the bus answers "maximum payload exceeded", as it
// did for a 3000² pair with mask). That slice is reported, naming the
// folder and the slice, and the three after it are still read and
// published; the job ends with an IngestDone counting it as rejected.
// Before, the job returned the error, was retried five times and dropped,
// and the later slices were never read.
func TestPublishFailureOfOneSlice(t *testing.T) {
	dir := t.TempDir()
	for i := 1; i <= 5; i++ {
		if err := pngpair.Write(dir, fmt.Sprintf("s%d", i), imgx.NewHU(16, 16), imgx.NewMask(16, 16)); err != nil {
			t.Fatal(err)
		}
	}
	job, _ := proto.Marshal(&lungsegv1.IngestJob{ReplayId: "r", Path: dir, Models: []string{"m"}})
	st := &ingest.Stage{Formats: formats.All(), Models: resolver{}}
	r := &refusing{bad: map[string]error{"s2": fmt.Errorf("publishing to %s: %w", bus.SubjRaw, nats.ErrMaxPayload)}}
	if err := st.Process(context.Background(), &stage.Msg{Data: job}, r); err != nil {
		t.Fatalf("the job failed: %v", err)
	}
	var got []string
	var done *lungsegv1.IngestDone
	for _, o := range r.outs {
		switch o.Subject {
		case bus.SubjRaw:
			got = append(got, o.SliceID)
		case bus.IngestedSubject("r"):
			done = &lungsegv1.IngestDone{}
			_ = proto.Unmarshal(o.Data, done)
		}
	}
	if strings.Join(got, ",") != "s1,s3,s4,s5" {
		t.Errorf("published %v, want s1,s3,s4,s5", got)
	}
	if len(r.fails) != 1 || r.fails[0].SliceID != "s2" {
		t.Fatalf("failures %+v, want one for s2", r.fails)
	}
	if msg := r.fails[0].Err.Error(); !strings.Contains(msg, dir) || !strings.Contains(msg, "s2") || !errors.Is(r.fails[0].Err, nats.ErrMaxPayload) {
		t.Errorf("failure %q does not name the input %s and slice s2", msg, dir)
	}
	if done == nil || done.Slices != 4 || done.Rejected != 1 {
		t.Fatalf("done %+v, want 4 slices and 1 rejected", done)
	}

	// A failure of the bus itself (a timeout) is not the slice's fault:
	// the job fails, naming the input, and is retried whole.
	r = &refusing{bad: map[string]error{"s2": fmt.Errorf("publishing to %s: %w", bus.SubjRaw, nats.ErrTimeout)}}
	err := st.Process(context.Background(), &stage.Msg{Data: job}, r)
	if err == nil || !strings.Contains(err.Error(), dir) || !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("bus timeout: error %v, want one naming %s", err, dir)
	}
}
