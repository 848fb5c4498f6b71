package dimse

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/ingest/dicomweb"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// TestStorescuLargeSlice sends a 4096×4096 CT instance (32 MiB of pixels,
// the advertised limit) with dcmtk's storescu. Before, the acceptor
// refused every instance over about 700×700 (status A700); now it is
// stored with success and its RAW message is an object reference that
// resolves to the instance's pixels.
func TestStorescuLargeSlice(t *testing.T) {
	storescu := testenv.RequireCommand(t, "storescu")
	b := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := bus.PixelStore(ctx, b.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	raw, err := b.JS.CreateOrUpdateConsumer(ctx, bus.StreamRaw, jetstream.ConsumerConfig{Durable: "check", AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	acc := &dicomweb.Acceptor{JS: b.JS, Models: []string{"m"}, ReplayID: "dimse-large", Source: "dimse", Log: zerolog.Nop()}
	handler := func(ctx context.Context, r *StoreRequest) (uint16, error) {
		_, err := acc.Accept(ctx, "C-STORE "+r.SOPInstanceUID, r.Part10(), "")
		return dicomweb.FailureReason(err), err
	}
	addr, _ := startSCP(t, Config{}, handler)
	h, p := hostPort(t, addr)
	const side = 4096
	hu := imgx.NewHU(side, side)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i*13%3000 - 1024)
	}
	const uid = "1.2.826.0.1.3680043.10.998.4096"
	file := filepath.Join(t.TempDir(), "large.dcm")
	if err := dicomwrite.WriteFile(file, dicomwrite.Series{StudyUID: "1.2.826.0.1.3680043.10.998", SeriesUID: "1.2.826.0.1.3680043.10.998.1", Intercept: -1024},
		dicomwrite.Instance{HU: hu, SpacingRowMm: 0.1, SpacingColMm: 0.1, InstanceNumber: 1, UID: uid}); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, storescu, "-v", "-aet", "SCANNER", "-aec", "LUNGSEG", h, p, file)
	if err != nil || !strings.Contains(out, "Received Store Response (Success)") {
		t.Fatalf("storescu: %v\n%s", err, out)
	}
	m, err := raw.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("not in RAW: %v", err)
	}
	if !objref.IsRef(m.Data()) {
		t.Errorf("RAW message of %d bytes is not a reference", len(m.Data()))
	}
	data, err := objref.Resolve(ctx, b.JS, m.Data())
	if err != nil {
		t.Fatal(err)
	}
	var s lungsegv1.Slice
	if err := proto.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	got, err := imgx.DecodeHU(int(s.Meta.Rows), int(s.Meta.Cols), s.Hu)
	if err != nil || s.Meta.InstanceUid != uid || s.Meta.Source != "dimse" || !slices.Equal(got.Pix, hu.Pix) {
		t.Fatalf("slice %+v: HU equal %v (%v)", s.Meta, err == nil && slices.Equal(got.Pix, hu.Pix), err)
	}
}
