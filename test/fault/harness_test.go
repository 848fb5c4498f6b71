// Package fault holds the fault tests: phantom replays of at least 1,000
// slices through separate lungseg stage processes while a stage process
// is killed with SIGKILL, the NATS server is killed and restarted, or one
// node of a 3-node JetStream cluster is killed. Each test counts, from the
// SCORES stream itself, the slices sent, scored, lost and duplicated.
package fault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/model"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Built once in TestMain.
var (
	lungsegBin string
	natsBin    string
	repoRoot   string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	wd, _ := os.Getwd()
	repoRoot = filepath.Clean(filepath.Join(wd, "..", ".."))
	dir, err := os.MkdirTemp("", "lungseg-fault-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Hold the default addresses of `lungseg run` (web 8080, NATS 4222)
	// while the tests run, where they are free: every process of these
	// tests must take free ports of its own, whatever else runs here.
	for _, a := range []string{"127.0.0.1:8080", "127.0.0.1:4222"} {
		if l, err := net.Listen("tcp", a); err == nil {
			defer l.Close()
		}
	}
	lungsegBin, natsBin = filepath.Join(dir, "lungseg"), filepath.Join(dir, "nats-server")
	for _, b := range []struct{ out, pkg string }{{lungsegBin, "./cmd/lungseg"}, {natsBin, "github.com/nats-io/nats-server/v2"}} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", b.pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

// Replay size: the issue asks for at least 1,000 slices per fault. Small
// slices keep it affordable; preprocess resizes them to the model's
// 256×256 anyway.
const (
	nSlices = 1000
	side    = 64
)

// Models of the test registry: the tiny untrained U-Net under two names.
var models = []string{"tiny", "tiny-b"}

// registry writes the test registry and returns its folder.
func registry(t *testing.T) string {
	t.Helper()
	src := filepath.Join(repoRoot, "segment", "testdata", "tiny")
	onnx, err := os.ReadFile(filepath.Join(src, model.ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	card, err := model.LoadCard(src)
	if err != nil {
		t.Fatal(err)
	}
	reg := t.TempDir()
	for _, name := range models {
		c := *card
		c.Name = name
		d := filepath.Join(reg, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, model.ModelFile), onnx, 0o644); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(&c)
		if err := os.WriteFile(filepath.Join(d, model.CardFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

// phantoms writes nSlices PNG pairs and returns their folder.
func phantoms(t *testing.T, seed int64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "phantoms")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := phantom.WritePNG(dir, phantom.Generate(seed, nSlices, phantom.Options{Rows: side, Cols: side})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is one child process that can be killed with SIGKILL and started
// again with the same command line.
type proc struct {
	t    *testing.T
	name string
	bin  string
	args []string
	env  []string
	log  string

	mu  sync.Mutex
	cmd *exec.Cmd
	out *os.File
}

func newProc(t *testing.T, name, bin string, args ...string) *proc {
	p := &proc{t: t, name: name, bin: bin, args: args, log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(p.stop)
	return p
}

func (p *proc) start() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	fmt.Fprintf(f, "---- start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), p.env...)
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("starting %s: %v", p.name, err)
	}
	p.cmd, p.out = cmd, f
}

// kill9 sends SIGKILL and reaps the process.
func (p *proc) kill9() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
	fmt.Fprintf(p.out, "---- killed with SIGKILL %s\n", time.Now().Format(time.RFC3339Nano))
	p.out.Close()
	p.cmd = nil
}

// stop ends the process with SIGTERM (then SIGKILL after 10s).
func (p *proc) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	p.out.Close()
	p.cmd = nil
}

// tail returns the end of the process log.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// stages starts ingest, preprocess, segment and score as separate
// processes against url.
func stages(t *testing.T, url, reg string) map[string]*proc {
	ps := map[string]*proc{}
	for _, st := range []string{"ingest", "preprocess", "segment", "score"} {
		p := newProc(t, st, lungsegBin, st, "--nats", url, "--models-dir", reg, "--log-level", "warn", "--config", configFile(t))
		p.start()
		ps[st] = p
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range ps {
				t.Logf("log of %s:\n%s", p.name, p.tail())
			}
		}
	})
	return ps
}

var cfgOnce sync.Map

// configFile writes the stage configuration (replicas from the test).
func configFile(t *testing.T) string {
	if v, ok := cfgOnce.Load(t.Name()); ok {
		return v.(string)
	}
	f := filepath.Join(t.TempDir(), "config.json")
	// The phantoms are written under the temporary folder.
	cfg := map[string]any{"replicas": replicas(t), "sync_always": true, "input_roots": []string{os.TempDir()}}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cfgOnce.Store(t.Name(), f)
	return f
}

var replicaSetting sync.Map

func replicas(t *testing.T) int {
	if v, ok := replicaSetting.Load(t.Name()); ok {
		return v.(int)
	}
	return 1
}

// connect joins the server(s) at url like a stage does.
func connect(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := bus.Connect(url, "fault-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.WaitConnected(ctx, nc); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// consumers are the stage durables of the test registry.
func consumers() map[string][]string {
	out := map[string][]string{
		bus.StreamIngest: {"ingest"},
		bus.StreamRaw:    {"preprocess"},
		bus.StreamMasks:  {"score"},
	}
	for _, m := range models {
		out[bus.StreamReady] = append(out[bus.StreamReady], "segment-"+m)
	}
	return out
}

// stageOf names the stage process serving a stream.
var stageOf = map[string]string{bus.StreamIngest: "ingest", bus.StreamRaw: "preprocess", bus.StreamReady: "segment", bus.StreamMasks: "score"}

// tally counts a replay's scores in the SCORES stream.
type tally struct {
	Sent       int `json:"sent"`
	Expected   int `json:"expected_scores"`
	Scored     int `json:"scored"`
	Lost       int `json:"lost"`
	Duplicated int `json:"duplicated"`
	Errors     int `json:"errors"`
	Messages   int `json:"score_messages"`
	// Missing names up to 10 lost slice|model pairs (slices some model
	// scored and another did not).
	Missing []string `json:"missing,omitempty"`
}

func (c tally) String() string {
	m := ""
	if len(c.Missing) > 0 {
		m = fmt.Sprintf(" (missing %v)", c.Missing)
	}
	return fmt.Sprintf("slices sent %d, slice×model scores expected %d, scored %d, lost %d%s, duplicated %d, errors %d",
		c.Sent, c.Expected, c.Scored, c.Lost, m, c.Duplicated, c.Errors)
}

// count reads every score and error of replay rid from the streams.
func count(t *testing.T, js jetstream.JetStream, rid string) tally {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	perPair := map[string]int{}
	read := func(stream, filter string, each func(m jetstream.Msg)) {
		st, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			return
		}
		// Read in batches, each by a fresh ordered consumer from the next
		// sequence, until the last message matching the filter was read:
		// after a cluster node was killed a fetch can come back empty
		// before the end, and stopping there would count scores as lost.
		next := uint64(1)
		for {
			c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter},
				DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: next})
			if err != nil {
				t.Fatal(err)
			}
			b, err := c.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for m := range b.Messages() {
				n++
				each(m)
				md, _ := m.Metadata()
				next = md.Sequence.Stream + 1
			}
			if n > 0 {
				continue
			}
			last, err := st.GetLastMsgForSubject(ctx, filter)
			if errors.Is(err, jetstream.ErrMsgNotFound) || (err == nil && last.Sequence < next) {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("reading %s: stopped before sequence %d: %v", filter, next, ctx.Err())
			}
			t.Logf("reading %s: an empty fetch before the end (next %d); again", filter, next)
		}
	}
	var tl tally
	read(bus.StreamScores, bus.PrefixScores+"*."+rid, func(m jetstream.Msg) {
		var s lungsegv1.Score
		if err := proto.Unmarshal(m.Data(), &s); err != nil {
			t.Errorf("undecodable score: %v", err)
			return
		}
		tl.Messages++
		perPair[s.Meta.GetId()+"|"+s.Model]++
	})
	read(bus.StreamErrors, bus.PrefixErrors+"*."+rid, func(m jetstream.Msg) { tl.Errors++ })
	tl.Sent = nSlices
	tl.Expected = nSlices * len(models)
	for _, n := range perPair {
		tl.Scored++
		tl.Duplicated += n - 1
	}
	tl.Lost = tl.Expected - tl.Scored
	ids := map[string]bool{}
	for k := range perPair {
		id, _, _ := strings.Cut(k, "|")
		ids[id] = true
	}
	for id := range ids {
		for _, m := range models {
			if perPair[id+"|"+m] == 0 && len(tl.Missing) < 10 {
				tl.Missing = append(tl.Missing, id+"|"+m)
			}
		}
	}
	sort.Strings(tl.Missing)
	return tl
}

// scoreCount is the number of messages in SCORES (progress).
func scoreCount(js jetstream.JetStream) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, bus.StreamScores)
	if err != nil {
		return 0
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.Msgs
}

// waitScores blocks until SCORES holds at least n messages.
func waitScores(t *testing.T, js jetstream.JetStream, n uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for scoreCount(js) < n {
		if time.Now().After(deadline) {
			t.Fatalf("SCORES did not reach %d messages in %v (has %d)", n, timeout, scoreCount(js))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// replayResult is what the replay command reported.
type replayResult struct {
	ReplayID string `json:"replay_id"`
	Ingested int64  `json:"ingested_slices"`
	Slices   []struct {
		ID    string `json:"id"`
		Model string `json:"model"`
	} `json:"slices"`
	Errors []json.RawMessage `json:"errors"`
	Err    error             `json:"-"`
}

// startReplay runs `lungseg replay` as its own process against url and
// returns a channel with its report when it ends.
func startReplay(t *testing.T, url, dir string, timeout time.Duration) <-chan replayResult {
	report := filepath.Join(t.TempDir(), "report.json")
	p := newProc(t, "replay", lungsegBin, "replay", "--nats", url, "--report", report, "--timeout", timeout.String(),
		"--model", strings.Join(models, ","), "--log-level", "warn", "--config", configFile(t), dir)
	p.start()
	ch := make(chan replayResult, 1)
	go func() {
		p.mu.Lock()
		cmd := p.cmd
		p.mu.Unlock()
		err := cmd.Wait()
		p.mu.Lock()
		p.cmd = nil
		p.mu.Unlock()
		var r replayResult
		b, rerr := os.ReadFile(report)
		if rerr == nil {
			rerr = json.Unmarshal(b, &r)
		}
		if err == nil {
			err = rerr
		}
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, p.tail())
		}
		r.Err = err
		ch <- r
	}()
	return ch
}

// rng is the test's random source, logged so a failure can be rerun.
func rng(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LUNGSEG_FAULT_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("random seed %d (set LUNGSEG_FAULT_SEED to repeat)", seed)
	return rand.New(rand.NewPCG(seed, 0x1ab))
}

// check fails the test unless every slice has exactly one score per model.
// checkReplay waits for the replay res, then counts and checks its scores.
func checkReplay(t *testing.T, res <-chan replayResult, js jetstream.JetStream, fault string) {
	t.Helper()
	out := <-res
	if out.Err != nil {
		t.Errorf("replay: %v", out.Err)
	}
	if out.ReplayID == "" {
		t.Fatal("no replay id")
	}
	tl := count(t, js, out.ReplayID)
	if tl.Lost > 0 {
		workState(t, js)
	}
	check(t, fault, tl)
}

// workState logs what the work streams and their consumers still hold
// after a replay that lost scores: a message left unacknowledged in
// READY or MASKS (stuck after its last delivery) is told apart from one
// that is gone.
func workState(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, name := range bus.WorkStreams {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Logf("%s: %v", name, err)
			continue
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Logf("%s: %v", name, err)
			continue
		}
		t.Logf("%s holds %d messages (first %d, last %d), leader %s", name, info.State.Msgs, info.State.FirstSeq,
			info.State.LastSeq, info.Cluster.Leader)
		for names := st.ConsumerNames(ctx); ; {
			n, ok := <-names.Name()
			if !ok {
				break
			}
			c, err := st.Consumer(ctx, n)
			if err != nil {
				continue
			}
			ci := c.CachedInfo()
			t.Logf("  consumer %s: pending %d, ack pending %d, redelivered %d, delivered %d, ack floor %d",
				n, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.Delivered.Stream, ci.AckFloor.Stream)
		}
	}
}

func check(t *testing.T, fault string, tl tally) {
	t.Helper()
	t.Logf("%s: %s", fault, tl)
	if tl.Lost != 0 || tl.Duplicated != 0 || tl.Errors != 0 || tl.Scored != tl.Expected {
		t.Errorf("%s: %s; want every slice scored once by each model", fault, tl)
	}
	writeNumbers(t, fault, tl)
}

// writeNumbers appends the tally to $LUNGSEG_FAULT_REPORT when set (CI
// keeps it as an artefact).
func writeNumbers(t *testing.T, fault string, tl tally) {
	path := os.Getenv("LUNGSEG_FAULT_REPORT")
	if path == "" {
		return
	}
	b, _ := json.Marshal(map[string]any{"fault": fault, "tally": tl})
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Log(err)
		return
	}
	defer f.Close()
	f.Write(append(b, '\n'))
}
