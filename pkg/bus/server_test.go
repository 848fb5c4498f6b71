package bus

import (
	"net"
	"strings"
	"testing"
)

// TestStartEmbeddedBusyPort: a listen address in use is reported at once,
// naming it, instead of "not ready after 30s".
func TestStartEmbeddedBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	s, err := StartEmbedded(EmbeddedOptions{StoreDir: t.TempDir(), Listen: addr})
	if err == nil {
		s.Shutdown()
		t.Fatal("started on a busy port")
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("error %q does not name %s as in use", err, addr)
	}
}
