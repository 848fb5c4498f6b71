package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRefusedWithoutConsumer: RAW keeps a slice only for its consumers
// (interest retention), so a receiver started before any stage refuses
// the instance (a transient failure the sender retries) instead of
// accepting it and losing it; once a stage's consumer exists, the same
// instance is accepted and kept.
func TestRefusedWithoutConsumer(t *testing.T) {
	e := start(t, nil)
	e.acc.ConsumerWait = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.bus.JS.DeleteConsumer(ctx, bus.StreamRaw, bustest.KeepDurable); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := dicomwrite.Write(&buf, dicomwrite.Series{StudyUID: "1.2.826.0.1.3680043.10.998", SeriesUID: "1.2.826.0.1.3680043.10.998.1", Intercept: -1024},
		dicomwrite.Instance{HU: patternHU(64, 64), SpacingRowMm: 0.7, SpacingColMm: 0.7, InstanceNumber: 1, UID: "1.2.826.0.1.3680043.10.998.1.1"}); err != nil {
		t.Fatal(err)
	}
	_, err := e.acc.Accept(ctx, "a.dcm", buf.Bytes(), "")
	var rej *Rejection
	if !errors.As(err, &rej) || rej.Permanent || rej.Reason != ReasonOutOfResources || !errors.Is(err, ErrNoConsumer) {
		t.Fatalf("without a consumer: %v (%+v), want a transient out-of-resources refusal", err, rej)
	}
	raw, err := e.bus.JS.CreateOrUpdateConsumer(ctx, bus.StreamRaw, jetstream.ConsumerConfig{Durable: "stage", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.acc.Accept(ctx, "a.dcm", buf.Bytes(), ""); err != nil {
		t.Fatalf("with a consumer: %v", err)
	}
	if _, err := raw.Next(jetstream.FetchMaxWait(10 * time.Second)); err != nil {
		t.Fatalf("the accepted slice is not in RAW: %v", err)
	}
}
