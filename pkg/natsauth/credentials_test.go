package natsauth_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/lungseg/lungseg/pkg/natsauth"
)

func TestCredentialsFile(t *testing.T) {
	c, err := natsauth.GenerateCredentials()
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := natsauth.GenerateCredentials()
	for _, r := range natsauth.Roles {
		if len(c.Users[r]) < 32 || c.Users[r] == c2.Users[r] {
			t.Errorf("role %s: password %q (another run: %q)", r, c.Users[r], c2.Users[r])
		}
	}
	path := filepath.Join(t.TempDir(), natsauth.CredentialsFile)
	if err := natsauth.WriteCredentials(path, c); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v, want 0600", st.Mode().Perm(), err)
	}
	got, err := natsauth.ReadCredentials(path)
	if err != nil || got.Users[natsauth.RoleReplay] != c.Users[natsauth.RoleReplay] {
		t.Fatalf("read back %v %v", got, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := natsauth.ReadCredentials(path); !errors.Is(err, natsauth.ErrCredentialsMode) {
		t.Fatalf("a world-readable file: %v, want ErrCredentialsMode", err)
	}
	if _, err := c.Options("nobody"); !errors.Is(err, natsauth.ErrUnknownRole) {
		t.Fatalf("unknown role: %v", err)
	}
}

// TestFileOptionFollowsRestart connects with FileOption, restarts the
// server with new passwords written to the same file, and checks that the
// client reconnects with them.
func TestFileOptionFollowsRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), natsauth.CredentialsFile)
	start := func(port int) (*server.Server, *natsauth.Credentials) {
		c, err := natsauth.GenerateCredentials()
		if err != nil {
			t.Fatal(err)
		}
		users, err := c.ServerUsers()
		if err != nil {
			t.Fatal(err)
		}
		s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true, Users: users})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("server not ready")
		}
		c.URL = s.ClientURL()
		if err := natsauth.WriteCredentials(path, c); err != nil {
			t.Fatal(err)
		}
		return s, c
	}
	s, c := start(server.RANDOM_PORT)
	port := s.Addr().(*net.TCPAddr).Port
	opt, err := natsauth.FileOption(path, natsauth.RoleReplay)
	if err != nil {
		t.Fatal(err)
	}
	reconnected := make(chan struct{}, 1)
	nc, err := nats.Connect(c.URL, opt, nats.ReconnectWait(50*time.Millisecond), nats.MaxReconnects(-1),
		nats.ReconnectHandler(func(*nats.Conn) { reconnected <- struct{}{} }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if nc2, err := nats.Connect(c.URL); err == nil {
		nc2.Close()
		t.Fatal("anonymous client accepted")
	}
	s.Shutdown()
	s.WaitForShutdown()
	s2, _ := start(port)
	defer s2.Shutdown()
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatalf("no reconnect with the new password (last error %v)", nc.LastError())
	}
}
