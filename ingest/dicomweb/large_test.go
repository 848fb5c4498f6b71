package dicomweb

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/objref"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// patternHU is a rows×cols slice of distinct-looking HU values.
func patternHU(rows, cols int) *imgx.HU {
	hu := imgx.NewHU(rows, cols)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i*7%3000 - 1024)
	}
	return hu
}

// TestStowLargeSlices stores CT instances of 1000×1000 and 4096×4096 (the
// advertised limit) over STOW-RS. Before, every instance over about
// 700×700 was refused with A700 ("over the 1032192-byte limit"); now each
// is stored, and its RAW message is an object reference that resolves to
// the instance's pixels.
func TestStowLargeSlices(t *testing.T) {
	e := start(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := bus.PixelStore(ctx, e.bus.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// A consumer first: RAW may keep messages only while one is there.
	raw, err := e.bus.JS.CreateOrUpdateConsumer(ctx, bus.StreamRaw, jetstream.ConsumerConfig{Durable: "check", AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	for i, side := range []int{1000, 4096} {
		hu := patternHU(side, side)
		uid := fmt.Sprintf("1.2.826.0.1.3680043.10.999.%d", side)
		var buf bytes.Buffer
		if err := dicomwrite.Write(&buf, dicomwrite.Series{StudyUID: "1.2.826.0.1.3680043.10.999", SeriesUID: "1.2.826.0.1.3680043.10.999.1", Intercept: -1024},
			dicomwrite.Instance{HU: hu, SpacingRowMm: 0.2, SpacingColMm: 0.2, InstanceNumber: i + 1, UID: uid}); err != nil {
			t.Fatal(err)
		}
		resp, err := e.cl.Store(ctx, "", buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != http.StatusOK || len(resp.Stored) != 1 || len(resp.Failed) != 0 {
			t.Fatalf("%d² (%d bytes): status %d, stored %d, failed %+v", side, buf.Len(), resp.Status, len(resp.Stored), resp.Failed)
		}
		m, err := raw.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("%d²: not in RAW: %v", side, err)
		}
		if !objref.IsRef(m.Data()) || len(m.Data()) > 1024 {
			t.Errorf("%d²: RAW message of %d bytes is not a reference", side, len(m.Data()))
		}
		b, err := objref.Resolve(ctx, e.bus.JS, m.Data())
		if err != nil {
			t.Fatal(err)
		}
		var s lungsegv1.Slice
		if err := proto.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		got, err := imgx.DecodeHU(int(s.Meta.Rows), int(s.Meta.Cols), s.Hu)
		if err != nil || s.Meta.InstanceUid != uid || !slices.Equal(got.Pix, hu.Pix) {
			t.Errorf("%d²: slice %s, HU equal %v (%v)", side, s.Meta.GetInstanceUid(), err == nil && slices.Equal(got.Pix, hu.Pix), err)
		}
	}
	if evs := errorEvents(t, e.bus.JS); len(evs) != 0 {
		t.Errorf("error events %+v", evs)
	}
}
