package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
)

// TestStageProcessServesMetrics runs the score stage alone, as its own
// process would, with --metrics, and scrapes /metrics and /healthz.
func TestStageProcessServesMetrics(t *testing.T) {
	env := bustest.Start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- stageCmd("score")(ctx, []string{"--nats", env.Server.ClientURL(), "--models-dir", testRegistry(t),
			"--metrics", addr, "--metrics-token", "", "--log-level", "warn"})
	}()
	var body string
	bustest.Eventually(t, 30*time.Second, "/metrics answers", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == 200
	})
	if !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "lungseg_") {
		t.Errorf("metrics lack the lungseg families:\n%.600s", body)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"nats":"ok"`) {
		t.Errorf("healthz %d %s", resp.StatusCode, b)
	}
	// Stop only once the stage runs, so the test covers a running stage.
	bustest.Eventually(t, 30*time.Second, "the score consumer", func() bool {
		_, err := env.JS.Consumer(ctx, bus.StreamMasks, "score")
		return err == nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
