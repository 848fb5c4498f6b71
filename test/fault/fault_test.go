package fault

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// replayTimeout bounds one replay; a lost slice shows as a timeout and
// the count below names it. Each kill costs up to one AckWait
// (stage.DefaultAckWait, 30 s) before what the killed process held is
// redelivered.
const replayTimeout = 8 * time.Minute

// startServer runs the embedded JetStream server of lungseg on a loopback
// port with sync_interval always, as its own process.
func startServer(t *testing.T, reg string) (*proc, string) {
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	// --no-nats-auth: these tests are about faults; the stages connect
	// without the run's per-run credentials (tested in cmd/lungseg).
	p := newProc(t, "nats", lungsegBin, "run", "--stages", "none", "--no-nats-auth", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--web", fmt.Sprintf("127.0.0.1:%d", freePort(t)), // never the default 8080, which may be taken
		"--data-dir", filepath.Join(t.TempDir(), "js"), "--models-dir", reg, "--config", configFile(t), "--log-level", "warn")
	p.start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log of the server:\n%s", p.tail())
		}
	})
	return p, url
}

// streamPublished is the number of messages ever stored in a stream (its
// last sequence): RAW keeps a slice only until every consumer has acked
// it, so what it holds says little about how far ingest has gone.
func streamPublished(js jetstream.JetStream, name string) uint64 {
	ctx, cancel := contextTimeout(2 * time.Second)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if err != nil {
		return 0
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.LastSeq
}

// TestKillStages kills each stage process with SIGKILL at a random point
// of one replay of 1,000 slices (ingest while it publishes, the others at
// random fractions of the scores), restarts it at once, and checks that
// every slice ends with exactly one score per model.
func TestKillStages(t *testing.T) {
	r := rng(t)
	reg := registry(t)
	dir := phantoms(t, 11)
	_, url := startServer(t, reg)
	_, js := connect(t, url)
	ps := stages(t, url, reg)
	res := startReplay(t, url, dir, replayTimeout)
	total := uint64(nSlices * len(models))

	// ingest: while it is publishing the slices of the job.
	rawAt := uint64(50 + r.IntN(nSlices/2))
	deadline := time.Now().Add(2 * time.Minute)
	for streamPublished(js, bus.StreamRaw) < rawAt && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := streamPublished(js, bus.StreamRaw); n >= nSlices {
		t.Errorf("ingest had published all %d slices before the kill", n)
	} else {
		t.Logf("kill -9 ingest with %d slices on RAW", n)
	}
	ps["ingest"].kill9()
	ps["ingest"].start()

	// The others at random points of the scores, each restarted at once.
	// What a killed process held comes back after the consumers' AckWait
	// (stage.DefaultAckWait, 30 s), well inside the replay.
	for i, st := range []string{"preprocess", "segment", "score"} {
		lo := 0.05 + 0.2*float64(i)
		at := uint64((lo + 0.15*r.Float64()) * float64(total))
		waitScores(t, js, at, 3*time.Minute)
		if n := scoreCount(js); n >= total {
			t.Errorf("the replay was over before %s was killed", st)
		} else {
			t.Logf("kill -9 %s at %d/%d scores", st, n, total)
		}
		ps[st].kill9()
		ps[st].start()
	}
	checkReplay(t, res, js, "kill -9 of each stage")
}

// TestServerRestart kills the NATS server with SIGKILL at a random point
// of a replay and starts it again on the same store; the stages and the
// replay reconnect.
func TestServerRestart(t *testing.T) {
	r := rng(t)
	reg := registry(t)
	dir := phantoms(t, 12)
	srv, url := startServer(t, reg)
	_, js := connect(t, url)
	stages(t, url, reg)
	res := startReplay(t, url, dir, replayTimeout)
	total := uint64(nSlices * len(models))
	at := uint64((0.2 + 0.5*r.Float64()) * float64(total))
	waitScores(t, js, at, 3*time.Minute)
	if n := scoreCount(js); n >= total {
		t.Errorf("the replay was over before the server was killed")
	} else {
		t.Logf("kill -9 nats server at %d/%d scores", n, total)
	}
	srv.kill9()
	time.Sleep(500 * time.Millisecond)
	srv.start()
	checkReplay(t, res, js, "nats-server kill -9 and restart")
}

// TestClusterNodeKilled runs a 3-node JetStream cluster (nats-server
// processes, R3 streams), kills one node (the leader of the READY stream)
// with SIGKILL at a random point of a replay and does not bring it back: the stages carry on with the other
// two.
func TestClusterNodeKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("three servers and four stages")
	}
	replicaSetting.Store(t.Name(), 3)
	r := rng(t)
	reg := registry(t)
	dir := phantoms(t, 13)
	nodes, url := startCluster(t, 3)
	_, js := connect(t, url)
	waitMeta(t, js)
	ensureStreams(t, js, 3)
	stages(t, url, reg)
	res := startReplay(t, url, dir, replayTimeout)
	total := uint64(nSlices * len(models))
	at := uint64((0.2 + 0.4*r.Float64()) * float64(total))
	waitScores(t, js, at, 3*time.Minute)
	// The hardest node to lose: the leader of READY (the segment
	// consumers' stream), else a random one.
	victim := r.IntN(len(nodes))
	if l := leader(js, bus.StreamReady); len(l) == 2 && l[0] == 'n' && l[1] >= '0' && int(l[1]-'0') < len(nodes) {
		victim = int(l[1] - '0')
	}
	if n := scoreCount(js); n >= total {
		t.Errorf("the replay was over before the node was killed")
	} else {
		t.Logf("kill -9 cluster node n%d at %d/%d scores (READY leader: %s)", victim, n, total, leader(js, bus.StreamReady))
	}
	nodes[victim].kill9()
	checkReplay(t, res, js, "3-node cluster, one node kill -9")
	for _, s := range []string{bus.StreamScores, bus.StreamReady} {
		if n := replicasOf(js, s); n != 3 {
			t.Errorf("stream %s has %d replicas, want 3", s, n)
		}
	}
}

// startCluster runs n nats-server processes forming one cluster on
// loopback ports and returns them with the client URL list.
func startCluster(t *testing.T, n int) ([]*proc, string) {
	client := make([]int, n)
	route := make([]int, n)
	for i := range n {
		client[i], route[i] = freePort(t), freePort(t)
	}
	var routes, urls string
	for i := range n {
		routes += fmt.Sprintf("    nats-route://127.0.0.1:%d\n", route[i])
		if i > 0 {
			urls += ","
		}
		urls += fmt.Sprintf("nats://127.0.0.1:%d", client[i])
	}
	var ps []*proc
	for i := range n {
		conf := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
max_payload: %d
jetstream { store_dir: %q }
cluster {
  name: lungseg-fault
  listen: 127.0.0.1:%d
  routes: [
%s  ]
}
`, i, client[i], bus.MaxPayload, filepath.Join(t.TempDir(), "js"), route[i], routes)
		f := filepath.Join(t.TempDir(), fmt.Sprintf("n%d.conf", i))
		if err := os.WriteFile(f, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		p := newProc(t, fmt.Sprintf("n%d", i), natsBin, "--config", f)
		p.start()
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("log of %s:\n%s", p.name, p.tail())
			}
		})
		ps = append(ps, p)
	}
	return ps, urls
}

// waitMeta waits until the cluster has a JetStream meta leader.
func waitMeta(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := contextTimeout(2 * time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no JetStream meta leader: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func leader(js jetstream.JetStream, stream string) string {
	ctx, cancel := contextTimeout(2 * time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil || st.CachedInfo().Cluster == nil {
		return "?"
	}
	return st.CachedInfo().Cluster.Leader
}

func replicasOf(js jetstream.JetStream, stream string) int {
	ctx, cancel := contextTimeout(5 * time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return 0
	}
	return st.CachedInfo().Config.Replicas
}

// ensureStreams creates the pipeline streams, retrying while the cluster
// is still forming.
func ensureStreams(t *testing.T, js jetstream.JetStream, replicas int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := contextTimeout(20 * time.Second)
		err := bus.EnsureStreams(ctx, js, bus.StreamOptions{Replicas: replicas})
		if err == nil {
			_, err = bus.PixelStore(ctx, js, bus.StreamOptions{Replicas: replicas})
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("creating R%d streams: %v", replicas, err)
		}
		t.Logf("creating streams: %v; retrying", err)
		time.Sleep(time.Second)
	}
}
