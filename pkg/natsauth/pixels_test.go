package natsauth_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/natsauth"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startUsers starts a JetStream server with every role as a user (password
// "secret-<role>") and returns its URL.
func startUsers(t *testing.T) string {
	t.Helper()
	pw := map[string]string{}
	for _, r := range natsauth.Roles {
		pw[r] = "secret-" + r
	}
	users, err := natsauth.Users(pw)
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true, Users: users, MaxPayload: bus.MaxPayload})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s.ClientURL()
}

// roleJS connects as one role of startUsers' server; asynchronous errors
// (permission violations) go to onErr, or are dropped when it is nil.
func roleJS(t *testing.T, url, role string, onErr nats.ErrHandler) jetstream.JetStream {
	t.Helper()
	opts, err := natsauth.Options{User: role, Password: "secret-" + role}.NATSOptions()
	if err != nil {
		t.Fatal(err)
	}
	if onErr == nil {
		onErr = func(*nats.Conn, *nats.Subscription, error) {}
	}
	nc, err := nats.Connect(url, append(opts, nats.ErrorHandler(onErr))...)
	if err != nil {
		t.Fatalf("connecting as %s: %v", role, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// TestPixelStoreRights checks what each role may do with the pixel
// bucket's objects: every stage and the DICOM receivers read and write
// it (pixels, a cascade input's native HU, any message over the payload
// limit: pkg/objref), replay only reads it (large scores), and a webhook
// cannot open it.
func TestPixelStoreRights(t *testing.T) {
	url := startUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel) // the subtests run in parallel, after this function returns
	admin := roleJS(t, url, natsauth.RoleAdmin, nil)
	obj, err := bus.PixelStore(ctx, admin, bus.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{1, 2, 3}, 100_000) // several chunks
	const key = "r1/slice-1"
	if _, err := obj.PutBytes(ctx, key, want); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		role           string
		open, get, put bool
	}{
		{natsauth.RoleIngest, true, true, true},
		{natsauth.RolePreprocess, true, true, true},
		{natsauth.RoleSegment, true, true, true},
		{natsauth.RoleRefine, true, true, true},
		{natsauth.RoleScore, true, true, true},
		{natsauth.RoleFindings, true, true, true},
		{natsauth.RoleReceive, true, true, true},
		{natsauth.RoleReplay, true, true, false},
		{natsauth.RoleWebhook, false, false, false},
	} {
		t.Run(tc.role, func(t *testing.T) {
			t.Parallel()
			js := roleJS(t, url, tc.role, nil)
			octx, ocancel := context.WithTimeout(ctx, 2*time.Second)
			store, err := js.ObjectStore(octx, bus.PixelsBucket)
			ocancel()
			if (err == nil) != tc.open {
				t.Fatalf("opening the pixel bucket: err %v, want allowed=%v", err, tc.open)
			}
			if err != nil {
				return
			}
			gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
			got, err := store.GetBytes(gctx, key)
			gcancel()
			if (err == nil) != tc.get {
				t.Errorf("reading %s: err %v, want allowed=%v", key, err, tc.get)
			} else if err == nil && !bytes.Equal(got, want) {
				t.Errorf("reading %s: %d bytes differ from the %d stored", key, len(got), len(want))
			}
			native := "native/r1/" + tc.role
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = store.PutBytes(pctx, native, want[:1000])
			pcancel()
			if (err == nil) != tc.put {
				t.Errorf("writing %s: err %v, want allowed=%v", native, err, tc.put)
			}
			_, ierr := obj.GetInfo(ctx, native)
			if stored := ierr == nil; stored != tc.put {
				t.Errorf("%s stored=%v (info err %v), want %v", native, stored, ierr, tc.put)
			}
		})
	}
}
