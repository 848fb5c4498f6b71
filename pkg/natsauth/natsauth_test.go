package natsauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// writePEM writes one PEM block to a file.
func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// makePKI writes a CA and a server certificate for 127.0.0.1 signed by it;
// it returns the paths of the CA, server certificate and server key.
func makePKI(t *testing.T) (ca, cert, key string) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lungseg test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	writePEM(t, ca, "CERTIFICATE", caDER)
	writePEM(t, cert, "CERTIFICATE", srvDER)
	writePEM(t, key, "EC PRIVATE KEY", keyDER)
	return ca, cert, key
}

// startSecure runs a JetStream server that requires TLS and a user per
// role, and creates the pipeline streams as admin.
func startSecure(t *testing.T) (url, ca string, pw map[string]string) {
	t.Helper()
	ca, cert, key := makePKI(t)
	pw = map[string]string{}
	for _, r := range Roles {
		pw[r] = "secret-" + r
	}
	users, err := Users(pw)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		NoSigs: true, NoLog: true, Users: users, TLS: true, TLSConfig: tc, TLSTimeout: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	url = s.ClientURL()
	admin := connect(t, url, Options{User: RoleAdmin, Password: pw[RoleAdmin], TLSCA: ca})
	js, _ := jetstream.New(admin)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// RAW, READY and MASKS drop what no consumer is there to take: keep it
	// for the tests, which publish before their stage consumes.
	if err := bustest.Keep(ctx, js); err != nil {
		t.Fatal(err)
	}
	return url, ca, pw
}

// asyncErrs collects a connection's asynchronous errors.
type asyncErrs struct {
	mu   sync.Mutex
	errs []error
}

func (a *asyncErrs) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	a.mu.Lock()
	a.errs = append(a.errs, err)
	a.mu.Unlock()
}

func (a *asyncErrs) has(substr string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.errs {
		if strings.Contains(strings.ToLower(e.Error()), strings.ToLower(substr)) {
			return true
		}
	}
	return false
}

func dial(url string, o Options, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := o.NATSOptions()
	if err != nil {
		return nil, err
	}
	opts = append(opts, nats.Timeout(3*time.Second), nats.NoReconnect())
	return nats.Connect(url, append(opts, extra...)...)
}

func connect(t *testing.T, url string, o Options, extra ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := dial(url, o, extra...)
	if err != nil {
		t.Fatalf("connecting as %q: %v", o.User, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestRefused shows that the server refuses clients without valid
// credentials or without TLS.
func TestRefused(t *testing.T) {
	url, ca, pw := startSecure(t)
	plain := strings.Replace(url, "tls://", "nats://", 1)
	for _, tc := range []struct {
		name string
		url  string
		o    Options
		want string
	}{
		{"no credentials", url, Options{TLSCA: ca}, "authorization violation"},
		{"wrong password", url, Options{User: RoleScore, Password: "guess", TLSCA: ca}, "authorization violation"},
		{"unknown user", url, Options{User: "mallory", Password: pw[RoleAdmin], TLSCA: ca}, "authorization violation"},
		{"no TLS", plain, Options{User: RoleScore, Password: pw[RoleScore]}, "tls"},
		{"untrusted server certificate", url, Options{User: RoleScore, Password: pw[RoleScore]}, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := dial(tc.url, tc.o)
			if err == nil {
				nc.Close()
				t.Fatal("connected; want refused")
			}
			if !strings.Contains(strings.ToLower(err.Error()), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	// The right password over TLS is accepted.
	connect(t, url, Options{User: RoleScore, Password: pw[RoleScore], TLSCA: ca})
}

// TestStagePermissions runs the real preprocess runner as the preprocess
// user (so the allow-list is enough for a stage's consumer, acks and
// outputs), then shows that the same user is refused outside its lane:
// publishing scores, subscribing to every subject, reading another
// stage's stream.
func TestStagePermissions(t *testing.T) {
	url, ca, pw := startSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var ae asyncErrs
	nc := connect(t, url, Options{User: RolePreprocess, Password: pw[RolePreprocess], TLSCA: ca}, nats.ErrorHandler(ae.handler))
	js, _ := jetstream.New(nc)
	proc := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		return e.Emit(ctx, stage.Out{Subject: bus.ReadySubject("m"), Data: m.Data, SliceID: m.SliceID, ReplayID: m.ReplayID, Model: "m"})
	})
	r, err := stage.New(js, stage.Config{Name: "preprocess", Stream: bus.StreamRaw}, proc, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()

	admin := connect(t, url, Options{User: RoleAdmin, Password: pw[RoleAdmin], TLSCA: ca})
	ajs, _ := jetstream.New(admin)
	if err := stage.Publish(ctx, ajs, "test", stage.Out{Subject: bus.SubjRaw, Data: []byte("slice"), SliceID: "s1", ReplayID: "r1"}, nil); err != nil {
		t.Fatal(err)
	}
	ready, err := ajs.Stream(ctx, bus.StreamReady)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		info, err := ready.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("preprocess runner did not publish its output (async errors: %v)", ae.errs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cons, err := ajs.Consumer(ctx, bus.StreamRaw, "preprocess")
	if err != nil {
		t.Fatal(err)
	}
	for {
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ci.AckFloor.Stream == 1 && ci.NumAckPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("preprocess runner did not ack: %+v", ci.AckFloor)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ae.has("permissions violation") {
		t.Fatalf("the stage needed a subject it is not allowed: %v", ae.errs)
	}

	// Outside its lane.
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	_, perr := js.Publish(pctx, bus.ScoresSubject("m", "r1"), []byte("forged"))
	pcancel()
	if perr == nil {
		t.Fatal("preprocess published a score")
	}
	scores, err := ajs.Stream(ctx, bus.StreamScores)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := scores.Info(ctx); err != nil || info.State.Msgs != 0 {
		t.Fatalf("SCORES holds %d messages (err %v), want 0", info.State.Msgs, err)
	}
	if _, err := nc.SubscribeSync("lung.>"); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
	_, cerr := js.CreateOrUpdateConsumer(cctx, bus.StreamScores, jetstream.ConsumerConfig{Durable: "spy"})
	ccancel()
	if cerr == nil {
		t.Fatal("preprocess created a consumer on SCORES")
	}
	if err := nc.Flush(); err != nil && !errors.Is(err, nats.ErrPermissionViolation) {
		t.Log("flush:", err)
	}
	waitFor(t, func() bool {
		return ae.has(`Publish to "`+bus.ScoresSubject("m", "r1")) && ae.has(`Subscription to "lung.>"`) &&
			ae.has(`Publish to "$JS.API.CONSUMER.CREATE.SCORES`)
	}, func() string {
		return "permission violations for the score publish, the lung.> subscription and the consumer"
	})
}

func waitFor(t *testing.T, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want error
	}{
		{"empty", Options{}, nil},
		{"password", Options{User: "u", Password: "p"}, nil},
		{"password and nkey", Options{User: "u", Password: "p", NKeySeedFile: "seed"}, ErrConflictingAuth},
		{"nkey and creds", Options{NKeySeedFile: "seed", CredsFile: "c"}, ErrConflictingAuth},
		{"cert without key", Options{TLSCert: "c"}, ErrTLSPair},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.o.Validate(); !errors.Is(err, tc.want) {
				t.Fatalf("Validate() = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := Permissions("root"); !errors.Is(err, ErrUnknownRole) {
		t.Fatalf("Permissions(root) = %v, want ErrUnknownRole", err)
	}
	t.Setenv("LUNGSEG_TEST_PW", "from-env")
	if pw, err := (Options{User: "u", PasswordEnv: "LUNGSEG_TEST_PW"}).password(); err != nil || pw != "from-env" {
		t.Fatalf("password from env = %q, %v", pw, err)
	}
	t.Setenv(EnvUser, "env-user")
	t.Setenv(EnvTLSCA, "/ca.pem")
	if o := (Options{User: "file-user"}).WithEnv(); o.User != "file-user" || o.TLSCA != "/ca.pem" || o.PasswordEnv != "" {
		t.Fatalf("WithEnv over a configured user: %+v", o)
	}
	t.Setenv(EnvPassword, "env-pw")
	if o := (Options{}).WithEnv(); o.User != "env-user" || o.PasswordEnv != EnvPassword {
		t.Fatalf("WithEnv: %+v", o)
	} else if pw, err := o.password(); err != nil || pw != "env-pw" {
		t.Fatalf("password via WithEnv = %q, %v", pw, err)
	}
	f := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(f, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if pw, err := (Options{User: "u", PasswordFile: f}).password(); err != nil || pw != "from-file" {
		t.Fatalf("password from file = %q, %v", pw, err)
	}
}

// TestServerConfig parses the generated authorization block with the
// server's own configuration parser and checks it gives the same users
// and permissions as Users.
func TestServerConfig(t *testing.T) {
	for _, r := range Roles {
		t.Setenv(PasswordEnv(r), "pw-"+r)
	}
	f := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(f, []byte(ServerConfig()), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Users) != len(Roles) {
		t.Fatalf("%d users, want %d", len(opts.Users), len(Roles))
	}
	for _, u := range opts.Users {
		want, err := Permissions(u.Username)
		if err != nil {
			t.Fatal(err)
		}
		if u.Password != "pw-"+u.Username {
			t.Errorf("%s: password %q not read from %s", u.Username, u.Password, PasswordEnv(u.Username))
		}
		if strings.Join(u.Permissions.Publish.Allow, " ") != strings.Join(want.Publish.Allow, " ") ||
			strings.Join(u.Permissions.Subscribe.Allow, " ") != strings.Join(want.Subscribe.Allow, " ") {
			t.Errorf("%s: permissions differ:\n got %+v %+v\nwant %+v %+v", u.Username,
				u.Permissions.Publish, u.Permissions.Subscribe, want.Publish, want.Subscribe)
		}
	}
}
