package replay_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// TestReplaySettlesFailedJobsAndLargeScores runs a replay of two inputs
// against a stand-in ingest stage: the first input's job fails whole (as
// a job did after "maximum payload exceeded" five times), the second
// publishes one 4096×4096 slice whose score (a 2 MiB predicted mask) goes
// by object reference. The replay must end with the failed job counted
// and the large slice scored; before, it waited for the failed job's
// IngestDone forever, and could not read a score over the payload limit.
func TestReplaySettlesFailedJobsAndLargeScores(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := bus.PixelStore(ctx, env.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	const side = 4096
	pred := imgx.NewMask(side, side)
	for i := range pred.Pix {
		if i%7 == 0 {
			pred.Pix[i] = 1
		}
	}
	ingest := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		var job lungsegv1.IngestJob
		if err := proto.Unmarshal(m.Data, &job); err != nil {
			return stage.Permanent(err)
		}
		if strings.HasSuffix(job.Path, "broken") {
			return stage.Permanentf("ingest: reading %s: publishing slice x: nats: maximum payload exceeded", job.Path)
		}
		meta := &lungsegv1.SliceMeta{Id: job.IdPrefix + "big", ReplayId: job.ReplayId, Rows: side, Cols: side}
		sc := &lungsegv1.Score{Meta: meta, Model: "m", HasTruth: true, Dice: 0.5, TruthPixels: 10, PredictedPixels: int64(pred.Count()),
			PredBits: pred.PackBits()}
		b, _ := proto.Marshal(sc)
		if err := e.Emit(ctx, stage.Out{Subject: bus.ScoresSubject("m", job.ReplayId), Data: b, SliceID: meta.Id, ReplayID: job.ReplayId, Model: "m"}); err != nil {
			return err
		}
		done, _ := proto.Marshal(&lungsegv1.IngestDone{ReplayId: job.ReplayId, Path: job.Path, JobIndex: job.JobIndex, Slices: 1, Models: []string{"m"}})
		return e.Emit(ctx, stage.Out{Subject: bus.IngestedSubject(job.ReplayId), Data: done, ReplayID: job.ReplayId, MsgID: job.ReplayId + "|done"})
	})
	r, err := stage.New(env.JS, stage.Config{Name: "ingest", Stream: bus.StreamIngest}, ingest, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = r.Run(rctx) }()

	rep, err := replay.Run(ctx, env.JS, replay.Options{Inputs: []string{"/data/broken", "/data/good"}, Timeout: 45 * time.Second, FindingsWait: -1}, zerolog.Nop())
	if err != nil {
		t.Fatalf("replay did not end: %v", err)
	}
	if rep.Rejected != 1 || rep.Ingested != 1 {
		t.Errorf("ingested %d, rejected %d; want 1 and 1", rep.Ingested, rep.Rejected)
	}
	if len(rep.Slices) != 1 || rep.Slices[0].ID != "good/big" || rep.Slices[0].Predicted != int64(pred.Count()) {
		t.Errorf("slices %+v, want good/big scored", rep.Slices)
	}
	if len(rep.Errors) != 1 || !strings.Contains(rep.Errors[0].Error, "/data/broken") || rep.Errors[0].ID != "job-0" {
		t.Errorf("errors %+v, want one naming /data/broken", rep.Errors)
	}
}
