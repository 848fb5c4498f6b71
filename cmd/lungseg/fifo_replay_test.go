package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/replay"
)

// TestReplayWithFIFOInputEnds runs the probe's command line in process:
// `lungseg replay --timeout 1m PIPE FOLDER --report R`, with a named pipe
// as the first input. The replay used to block in open() on the pipe: the
// folder was never ingested, and the report was written but the command
// never returned. Now it returns, the folder is scored and the pipe is
// counted as a rejected input.
func TestReplayWithFIFOInputEnds(t *testing.T) {
	reg := testRegistry(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe.dcm")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := writePhantoms(filepath.Join(dir, "png"), "png", 3, 2, phantom.Options{Rows: 64, Cols: 64})
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.ModelsDir, cfg.LogLevel = reg, "warn"
	reportPath := filepath.Join(dir, "report.json")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- doReplay(ctx, &cfg, replayArgs{inputs: []string{fifo, in}, models: []string{"tiny"}, report: reportPath, timeout: time.Minute})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("replay did not return within 2 minutes")
	}
	b, err := os.ReadFile(reportPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep replay.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range rep.Slices {
		ids = append(ids, s.ID)
	}
	if len(rep.Slices) != 2 || rep.Rejected < 1 {
		t.Errorf("slices %v, %d rejected inputs; want the 2 slices of the folder and the pipe rejected", ids, rep.Rejected)
	}
	for _, id := range ids {
		if !strings.HasPrefix(id, "png/") {
			t.Errorf("slice %s is not from the folder", id)
		}
	}
	found := false
	for _, e := range rep.Errors {
		found = found || (e.Stage == "ingest" && strings.Contains(e.Error, fifo+" is a named pipe (FIFO)"))
	}
	if !found {
		t.Errorf("report errors %v: want the pipe, by path", rep.Errors)
	}
}
