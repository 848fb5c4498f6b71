package bench

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestFirstByteMarkIsMonotonic checks that the first-byte mark of a series
// round carries a monotonic clock reading, as the round's other marks do
// (time.Now()), so that its total and its parts are differences on the
// same clock; and that only the first byte after a reset is marked.
func TestFirstByteMarkIsMonotonic(t *testing.T) {
	ln0, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &firstByteListener{Listener: ln0}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		b := make([]byte, 4)
		for range 2 {
			if _, err := c.Read(b); err != nil {
				got <- err
				return
			}
		}
		got <- nil
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := time.Now()
	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ln.first.Load() == nil; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no first-byte mark 10 s after a byte was written")
		}
	}
	first := *ln.first.Load()
	time.Sleep(5 * time.Millisecond)
	if _, err := c.Write([]byte("b")); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// time.Time's String shows the monotonic reading as "m=±…"
	if !strings.Contains(first.String(), " m=") {
		t.Fatalf("first-byte mark %v has no monotonic reading", first)
	}
	if first.Before(before) || !ln.first.Load().Equal(first) {
		t.Fatalf("first-byte mark %v (written before %v), now %v: not the first byte's", first, before, *ln.first.Load())
	}
}
