// Package privacy checks that no patient-identifying DICOM attribute
// reaches the pipeline's logs, error events or outputs.
package privacy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// TestNoPatientDataInLogs replays phantom DICOMs (PatientName
// PHANTOM^SYNTHETIC, PatientID PHANTOM-<seed>) and broken copies of them
// through every stage with debug logging captured, then checks that
// neither attribute appears in the logs or in any message of any stream
// (errors, scores, findings, events, intermediate data).
func TestNoPatientDataInLogs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline")
	}
	const seed = 4242
	secrets := []string{"PHANTOM^SYNTHETIC", fmt.Sprintf("PHANTOM-%d", seed)}

	dir := filepath.Join(t.TempDir(), "dicom")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	slices := phantom.Generate(seed, 6, phantom.Options{Rows: 64, Cols: 64, Series: true})
	if err := phantom.WriteDICOM(dir, slices); err != nil {
		t.Fatal(err)
	}
	// Broken copies that still carry the patient module: truncated in the
	// pixel data, and cut inside the dataset.
	first := filepath.Join(dir, slices[0].Name()+".dcm")
	b, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if !bytes.Contains(b, []byte(s)) {
			t.Fatalf("the phantom DICOM does not carry %q: the check below would prove nothing", s)
		}
	}
	idx := bytes.Index(b, []byte(secrets[1]))
	for name, data := range map[string][]byte{
		"broken_pixels.dcm":  b[:len(b)-100],
		"broken_patient.dcm": b[:idx+len(secrets[1])+40],
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var logs testenv.SyncBuffer
	log := zerolog.New(&logs).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	env := bustest.Start(t)
	reg := registry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pctx, stop := context.WithCancel(ctx)
	perr := make(chan error, 1)
	go func() {
		perr <- pipeline.Run(pctx, env.JS, pipeline.Config{Registry: reg, Formats: formats.All()}, log)
	}()
	rep, err := replay.Run(ctx, env.JS, replay.Options{Inputs: []string{dir}, MasksDir: filepath.Join(dir, phantom.MasksDir), Models: []string{"tiny"}}, log)
	if err != nil {
		t.Fatal(err)
	}
	// Let the stages settle (findings, error events of ingest).
	time.Sleep(2 * time.Second)
	stop()
	if err := <-perr; err != nil {
		t.Fatal(err)
	}
	if len(rep.Slices) != len(slices) || rep.Rejected < 2 {
		t.Fatalf("replay scored %d of %d slices and rejected %d inputs; want all scored and 2 rejected", len(rep.Slices), len(slices), rep.Rejected)
	}

	text := logs.String()
	if !strings.Contains(text, "input rejected") || !strings.Contains(text, "broken_patient") {
		t.Fatalf("the captured logs lack the rejected inputs; the check would prove nothing:\n%s", text)
	}
	for _, s := range secrets {
		if i := strings.Index(text, s); i >= 0 {
			t.Errorf("the logs contain %q: …%s…", s, text[max(0, i-200):min(len(text), i+100)])
		}
	}
	for _, e := range rep.Errors {
		for _, s := range secrets {
			if strings.Contains(e.Error, s) {
				t.Errorf("error of %s contains %q: %s", e.ID, s, e.Error)
			}
		}
	}

	// Every message of every stream.
	total := 0
	names := env.JS.StreamNames(ctx)
	for name := range names.Name() {
		n, hits := scan(t, ctx, env.JS, name, secrets)
		total += n
		for _, h := range hits {
			t.Errorf("stream %s: %s", name, h)
		}
	}
	if total == 0 {
		t.Fatal("no messages scanned")
	}
	t.Logf("%d log bytes and %d stream messages scanned", len(text), total)
}

// scan reads every message of a stream and reports the ones that contain
// one of the secrets (in the payload or a header).
func scan(t *testing.T, ctx context.Context, js jetstream.JetStream, name string, secrets []string) (int, []string) {
	t.Helper()
	st, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var hits []string
	n := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		n++
		blob := append([]byte(m.Subject), m.Data...)
		for k, vs := range m.Header {
			blob = append(blob, k...)
			for _, v := range vs {
				blob = append(blob, v...)
			}
		}
		for _, s := range secrets {
			if bytes.Contains(blob, []byte(s)) {
				hits = append(hits, fmt.Sprintf("message %d on %s contains %q", seq, m.Subject, s))
			}
		}
	}
	return n, hits
}

// registry opens a registry holding the tiny test model.
func registry(t *testing.T) *model.Registry {
	t.Helper()
	reg, err := model.OpenRegistry(testenv.TinyRegistry(t))
	if err != nil {
		t.Fatal(err)
	}
	return reg
}
