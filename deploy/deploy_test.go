package deploy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/natsauth"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
	"go.yaml.in/yaml/v3"
)

// TestGeneratedFilesUpToDate fails when a generated file differs from what
// the code gives (run go run ./deploy/gen) or a stale one is left over.
func TestGeneratedFilesUpToDate(t *testing.T) {
	files, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range files {
		got, err := os.ReadFile(rel)
		if err != nil {
			t.Errorf("%s: %v (run go run ./deploy/gen)", rel, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is out of date (run go run ./deploy/gen)", rel)
		}
	}
	for _, sub := range []string{"jetstream/streams", "jetstream/consumers"} {
		have, _ := filepath.Glob(filepath.Join(sub, "*.json"))
		for _, f := range have {
			if _, ok := files[f]; !ok {
				t.Errorf("%s is not generated any more (run go run ./deploy/gen)", f)
			}
		}
	}
	for _, m := range ShippedModels {
		if _, err := os.Stat(filepath.Join("..", "models", m, "card.json")); err != nil {
			t.Errorf("shipped model %s: %v", m, err)
		}
	}
	if reg, err := model.OpenRegistry(filepath.Join("..", "models")); err != nil {
		t.Error(err)
	} else if got := reg.Cascades(); !slices.Equal(got, ShippedCascades) {
		t.Errorf("the shipped registry's cascades are %v, ShippedCascades %v", got, ShippedCascades)
	}
}

// TestConsumersMatchRunner compares the consumer definitions with the
// consumers real stage runners create, so the definitions cannot drift
// from the code that runs.
func TestConsumersMatchRunner(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range Consumers([]string{"m1"}, []string{"m1+crop"}) {
		if c.Stream == "DLQ_ADVISORIES" {
			continue
		}
		name := c.Config.Durable
		if strings.HasPrefix(name, "segment-") {
			name = "segment"
		}
		if strings.HasPrefix(name, "refine-") {
			name = "refine"
		}
		r, err := stage.New(env.JS, stage.Config{Name: name, Durable: c.Config.Durable, Stream: c.Stream, FilterSubjects: c.Config.FilterSubjects},
			stage.ProcessorFunc(func(context.Context, *stage.Msg, stage.Emitter) error { return nil }), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		cons, err := r.Consumer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := cons.CachedInfo().Config
		want := c.Config
		if got.Durable != want.Durable || got.AckPolicy != want.AckPolicy || got.AckWait != want.AckWait ||
			got.MaxDeliver != want.MaxDeliver || got.MaxAckPending != want.MaxAckPending || got.DeliverPolicy != want.DeliverPolicy ||
			got.Description != want.Description || !reflect.DeepEqual(append(got.FilterSubjects, got.FilterSubject), append(want.FilterSubjects, want.FilterSubject)) {
			t.Errorf("%s on %s:\n runner %+v\ndefined %+v", want.Durable, c.Stream, got, want)
		}
	}
	// The definitions themselves are accepted by the server (R1 here).
	for _, s := range Streams(bus.StreamOptions{}) {
		if _, err := env.JS.CreateOrUpdateStream(ctx, s); err != nil {
			t.Fatalf("stream %s: %v", s.Name, err)
		}
	}
	for _, c := range Consumers(ShippedModels, ShippedCascades) {
		if _, err := env.JS.CreateOrUpdateConsumer(ctx, c.Stream, c.Config); err != nil {
			t.Fatalf("consumer %s: %v", c.Config.Durable, err)
		}
	}
}

// selfSigned writes a self-signed certificate and key for the TLS config
// check.
func selfSigned(t *testing.T) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"nats"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(k)
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	_ = os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600)
	return cert, key
}

// TestNATSConfig parses the cluster node configuration with nats-server's
// own parser (what `nats-server --config FILE -t` does) and checks what
// the pipeline relies on.
func TestNATSConfig(t *testing.T) {
	t.Setenv("SERVER_NAME", "nats-1")
	for _, r := range natsauth.Roles {
		t.Setenv(natsauth.PasswordEnv(r), "pw-"+r)
	}
	cert, key := selfSigned(t)
	t.Setenv("NATS_TLS_CERT", cert)
	t.Setenv("NATS_TLS_KEY", key)
	t.Setenv("NATS_TLS_CA", cert)
	for _, f := range []string{"nats/nats.conf", "nats/nats-tls.conf"} {
		t.Run(filepath.Base(f), func(t *testing.T) {
			o, err := server.ProcessConfigFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if o.ServerName != "nats-1" || !o.JetStream || !o.SyncAlways || o.StoreDir != "/data/jetstream" {
				t.Errorf("server %q jetstream %v sync always %v store %q", o.ServerName, o.JetStream, o.SyncAlways, o.StoreDir)
			}
			if o.MaxPayload != bus.MaxPayload {
				t.Errorf("max_payload %d, want bus.MaxPayload %d", o.MaxPayload, bus.MaxPayload)
			}
			if o.Port != 4222 || o.Cluster.Port != 6222 || o.HTTPPort != 8222 || o.Cluster.Name != "lungseg" {
				t.Errorf("ports %d/%d/%d cluster %q", o.Port, o.Cluster.Port, o.HTTPPort, o.Cluster.Name)
			}
			var hosts []string
			for _, u := range o.Routes {
				hosts = append(hosts, u.Host)
			}
			if !reflect.DeepEqual(hosts, []string{"nats-0.nats:6222", "nats-1.nats:6222", "nats-2.nats:6222"}) {
				t.Errorf("routes %v", hosts)
			}
			if len(o.Users) != len(natsauth.Roles) {
				t.Fatalf("%d users, want one per role", len(o.Users))
			}
			for _, u := range o.Users {
				p, _ := natsauth.Permissions(u.Username)
				if u.Password != "pw-"+u.Username || !reflect.DeepEqual(u.Permissions.Publish.Allow, p.Publish.Allow) {
					t.Errorf("user %s: password or permissions differ from pkg/natsauth", u.Username)
				}
			}
			if wantTLS := strings.Contains(f, "tls"); (o.TLSConfig != nil) != wantTLS || (wantTLS && o.TLSVerify) {
				t.Errorf("tls %v, want %v", o.TLSConfig != nil, wantTLS)
			}
		})
	}
}

// manifest is one Kubernetes object, loosely typed.
type manifest struct {
	file string
	obj  map[string]any
}

func get(m any, path ...string) any {
	for _, p := range path {
		mm, ok := m.(map[string]any)
		if !ok {
			return nil
		}
		m = mm[p]
	}
	return m
}

func str(m any, path ...string) string { s, _ := get(m, path...).(string); return s }

func list(m any, path ...string) []any { l, _ := get(m, path...).([]any); return l }

func readYAML(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var out []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc != nil {
			out = append(out, doc)
		}
	}
}

// lungsegArgs collects the command lines of the lungseg containers.
type cmdline struct {
	where string
	args  []string
}

func strs(l []any) []string {
	out := make([]string, len(l))
	for i, v := range l {
		out[i], _ = v.(string)
	}
	return out
}

// TestKubernetesManifests checks the manifests the way the API server and
// kustomize would reject them: required fields, selectors that match
// their pod templates, every referenced ConfigMap, Secret (and key), PVC
// and Service present, the NATS cluster shape, and every Deployment a
// stage with replicas and resources. The lungseg command lines are run
// with --check-config by TestCommandLines.
func TestKubernetesManifests(t *testing.T) {
	kust := readYAML(t, "kustomization.yaml")[0]
	if str(kust, "namespace") != "lungseg" {
		t.Errorf("kustomization namespace %q", str(kust, "namespace"))
	}
	var objs []manifest
	for _, r := range strs(list(kust, "resources")) {
		for _, d := range readYAML(t, r) {
			objs = append(objs, manifest{r, d})
		}
	}
	have := map[string]bool{} // kind/name
	secretKeys := map[string]map[string]bool{}
	for _, g := range list(kust, "configMapGenerator") {
		have["ConfigMap/"+str(g, "name")] = true
		for _, f := range strs(list(g, "files")) {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("configMapGenerator %s: %v", str(g, "name"), err)
			}
		}
	}
	for _, m := range objs {
		kind, name := str(m.obj, "kind"), str(m.obj, "metadata", "name")
		if str(m.obj, "apiVersion") == "" || kind == "" || name == "" {
			t.Errorf("%s: object without apiVersion, kind or name: %v", m.file, m.obj)
		}
		if ns := str(m.obj, "metadata", "namespace"); kind != "Namespace" && ns != "lungseg" {
			t.Errorf("%s: %s/%s in namespace %q", m.file, kind, name, ns)
		}
		have[kind+"/"+name] = true
		if kind == "Secret" {
			keys := map[string]bool{}
			for k := range get(m.obj, "stringData").(map[string]any) {
				keys[k] = true
			}
			secretKeys[name] = keys
		}
	}
	for _, r := range natsauth.Roles {
		if !secretKeys["nats-passwords"][r] {
			t.Errorf("secret nats-passwords lacks the %s password", r)
		}
	}
	labelsMatch := func(sel, labels any) bool {
		sm, _ := sel.(map[string]any)
		lm, _ := labels.(map[string]any)
		if len(sm) == 0 {
			return false
		}
		for k, v := range sm {
			if lm[k] != v {
				return false
			}
		}
		return true
	}
	var templates []any
	deployments := map[string]int{}
	for _, m := range objs {
		kind, name := str(m.obj, "kind"), str(m.obj, "metadata", "name")
		var pod any
		switch kind {
		case "Deployment", "StatefulSet":
			pod = get(m.obj, "spec", "template")
			if !labelsMatch(get(m.obj, "spec", "selector", "matchLabels"), get(pod, "metadata", "labels")) {
				t.Errorf("%s %s: selector does not match the pod template labels", kind, name)
			}
			n, _ := get(m.obj, "spec", "replicas").(int)
			if kind == "Deployment" {
				deployments[name] = n
			}
			if kind == "StatefulSet" {
				if n != 3 {
					t.Errorf("StatefulSet %s: %d replicas, want a 3-node cluster", name, n)
				}
				svc := str(m.obj, "spec", "serviceName")
				if !have["Service/"+svc] {
					t.Errorf("StatefulSet %s: service %q missing", name, svc)
				}
			}
		case "Job":
			pod = get(m.obj, "spec", "template")
		default:
			continue
		}
		templates = append(templates, get(pod, "metadata", "labels"))
		spec := get(pod, "spec")
		for _, v := range list(spec, "volumes") {
			if cm := str(v, "configMap", "name"); cm != "" && !have["ConfigMap/"+cm] {
				t.Errorf("%s %s: ConfigMap %s missing", kind, name, cm)
			}
			if pvc := str(v, "persistentVolumeClaim", "claimName"); pvc != "" && !have["PersistentVolumeClaim/"+pvc] {
				t.Errorf("%s %s: PVC %s missing", kind, name, pvc)
			}
		}
		mounts := map[string]bool{}
		for _, v := range list(spec, "volumes") {
			mounts[str(v, "name")] = true
		}
		for _, v := range list(m.obj, "spec", "volumeClaimTemplates") {
			mounts[str(v, "metadata", "name")] = true
		}
		for _, c := range list(spec, "containers") {
			if str(c, "image") == "" {
				t.Errorf("%s %s: container without image", kind, name)
			}
			if kind != "Job" && get(c, "resources", "requests") == nil {
				t.Errorf("%s %s: container %s without resource requests", kind, name, str(c, "name"))
			}
			for _, vm := range list(c, "volumeMounts") {
				if !mounts[str(vm, "name")] {
					t.Errorf("%s %s: mount of unknown volume %s", kind, name, str(vm, "name"))
				}
			}
			for _, e := range list(c, "env") {
				if s := str(e, "valueFrom", "secretKeyRef", "name"); s != "" {
					if k := str(e, "valueFrom", "secretKeyRef", "key"); !secretKeys[s][k] {
						t.Errorf("%s %s: secret %s key %s missing", kind, name, s, k)
					}
				}
			}
		}
	}
	for _, m := range objs {
		if str(m.obj, "kind") != "Service" {
			continue
		}
		sel := get(m.obj, "spec", "selector")
		if !slices.ContainsFunc(templates, func(l any) bool { return labelsMatch(sel, l) }) {
			t.Errorf("Service %s selects no pods", str(m.obj, "metadata", "name"))
		}
	}
	for _, st := range []string{"ingest", "preprocess", "segment", "refine", "score", "dlq"} {
		if deployments[st] < 1 {
			t.Errorf("no Deployment for %s", st)
		}
	}
	if deployments["segment"] < 2 {
		t.Errorf("segment has %d replicas; it should scale out", deployments["segment"])
	}
}

// commandLines returns the lungseg command lines of the manifests and the
// compose file.
func commandLines(t *testing.T) []cmdline {
	var out []cmdline
	for _, f := range []string{"k8s/stages.yaml", "k8s/streams-job.yaml"} {
		for _, d := range readYAML(t, f) {
			for _, c := range list(d, "spec", "template", "spec", "containers") {
				if str(c, "image") == "lungseg:latest" {
					out = append(out, cmdline{f + ":" + str(c, "name"), strs(list(c, "args"))})
				}
			}
		}
	}
	compose := readYAML(t, "compose.yaml")[0]
	for name, svc := range get(compose, "services").(map[string]any) {
		if str(svc, "image") != "lungseg:latest" {
			continue
		}
		args := strs(list(svc, "command"))
		if ep := strs(list(svc, "entrypoint")); len(ep) > 0 {
			args = ep[1:]
		}
		out = append(out, cmdline{"compose.yaml:" + name, args})
	}
	return out
}

// TestCompose checks the compose file: three NATS nodes named as the
// shared nats.conf expects, each stage a service with its own NATS user,
// and every lungseg service waiting for the streams.
func TestCompose(t *testing.T) {
	c := readYAML(t, "compose.yaml")[0]
	svcs := get(c, "services").(map[string]any)
	for i, n := range []string{"nats-0", "nats-1", "nats-2"} {
		s := svcs[n]
		if s == nil {
			t.Fatalf("no service %s", n)
		}
		if str(s, "environment", "SERVER_NAME") != n {
			t.Errorf("%s: SERVER_NAME %q", n, str(s, "environment", "SERVER_NAME"))
		}
		if al := strs(list(s, "networks", "default", "aliases")); !slices.Contains(al, n+".nats") {
			t.Errorf("%s: no alias %s.nats (routes in nats.conf use it)", n, n)
		}
		for _, r := range natsauth.Roles {
			if str(s, "environment", natsauth.PasswordEnv(r)) == "" {
				t.Errorf("%s: %s not passed", n, natsauth.PasswordEnv(r))
			}
		}
		_ = i
	}
	for _, st := range []string{"ingest", "preprocess", "segment", "refine", "score", "dlq", "replay"} {
		s := svcs[st]
		if s == nil {
			t.Errorf("no service %s", st)
			continue
		}
		if u := str(s, "environment", natsauth.EnvUser); u != st {
			t.Errorf("%s: NATS user %q", st, u)
		}
		if get(s, "depends_on", "streams") == nil {
			t.Errorf("%s does not wait for the streams job", st)
		}
	}
}

// TestCommandLines builds lungseg and runs every command line of the
// manifests with --check-config: the commands exist, the flags parse and
// the configuration file validates.
func TestCommandLines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "lungseg")
	build := exec.Command("go", "build", "-o", bin, "../cmd/lungseg")
	build.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	lines := commandLines(t)
	if len(lines) < 8 {
		t.Fatalf("found %d lungseg command lines", len(lines))
	}
	for _, cl := range lines {
		args := slices.Clone(cl.args)
		for i, a := range args {
			if a == "/etc/lungseg/config.json" {
				args[i] = "lungseg/config.json"
			}
		}
		args = append(args, "--check-config")
		if args[0] == "replay" {
			args = append(args, "/data") // replay wants an input before it loads the configuration
		}
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "configuration ok") {
			t.Errorf("%s: lungseg %s: %v\n%s", cl.where, strings.Join(args, " "), err, out)
		}
	}
}
