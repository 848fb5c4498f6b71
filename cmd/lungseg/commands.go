package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/lungseg/lungseg/pkg/httpsec"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/dlq"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/internal/web"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/natsauth"
	"github.com/lungseg/lungseg/pkg/progress"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/segment"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

func init() {
	commands = []command{
		{"run", "run every stage with an embedded NATS server (or --nats URL)", cmdRun},
		{"ingest", "run the ingest stage against --nats URL", stageCmd(pipeline.Ingest)},
		{"preprocess", "run the preprocess stage against --nats URL", stageCmd(pipeline.Preprocess)},
		{"segment", "run the segment stage against --nats URL", stageCmd(pipeline.Segment)},
		{"refine", "run the refine stage (the crop models of \"+crop\" cascades) against --nats URL", stageCmd(pipeline.Refine)},
		{"score", "run the score stage against --nats URL", stageCmd(pipeline.Score)},
		{"findings", "run the findings stage (and webhooks) against --nats URL", stageCmd(pipeline.Findings)},
		{"replay", "replay inputs through the pipeline and report Dice, IoU and RMSE", cmdReplay},
		{"report", "write a static HTML report (PNG sheets, Dice histograms) from a replay's JSON report", cmdReport},
		{"demo", "make phantom data in every format and replay it with every shipped model", cmdDemo},
		{"models", "list the model registry", cmdModels},
		{"phantom", "write synthetic CT slices with exact nodule masks", cmdPhantom},
		{"dataset", "build an augmented training set of PNG pairs (dataset build)", cmdDataset},
		{"receive", "receive DICOM (STOW-RS, C-STORE SCP, watched folder) and write SEG results", cmdReceive},
		{"bench", "measure inference, pipeline, batching and decoding against PyTorch, pydicom and pandas", cmdBench},
		{"dlq", "inspect and re-drive dead letters: dlq list|replay|watch (--nats URL)", cmdDLQ},
		{"streams", "print or apply the JetStream streams and consumers: streams print|apply", cmdStreams},
		{"tail", "print findings or alerts as they arrive (tail [SUBJECT], default lung.findings.>)", cmdTail},
	}
}

// node is a process's NATS: a connection, JetStream, and the embedded
// server when there is one.
type node struct {
	srv *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	tmp string
	// creds are the users of the embedded server (nil: none, or not
	// ours); credsFile is where they were written for other processes.
	creds     *natsauth.Credentials
	credsFile string
	// limited: connected with a role's credentials (not admin), so the
	// streams and buckets are left to the operator.
	limited bool
	extra   []*nats.Conn
}

func (n *node) Close() {
	for _, c := range n.extra {
		_ = c.Drain()
	}
	if n.nc != nil {
		_ = n.nc.Drain()
	}
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
	}
	if n.credsFile != "" {
		_ = os.Remove(n.credsFile)
	}
	if n.tmp != "" {
		_ = os.RemoveAll(n.tmp)
	}
}

// as opens another in-process connection to the embedded server as role
// (closed with the node).
func (n *node) as(role, name string) (jetstream.JetStream, error) {
	o, err := n.creds.Options(role)
	if err != nil {
		return nil, err
	}
	nc, err := bus.ConnectEmbedded(n.srv, name, nats.UserInfo(o.User, o.Password))
	if err != nil {
		return nil, fmt.Errorf("connecting as %s: %w", role, err)
	}
	n.extra = append(n.extra, nc)
	return bus.JetStream(nc)
}

// connect joins cfg.NATS as the administrator, or starts the embedded
// server (see connectAs).
func connect(ctx context.Context, cfg *Config, name string, tempStore bool, log zerolog.Logger) (*node, error) {
	return connectAs(ctx, cfg, name, natsauth.RoleAdmin, tempStore, log)
}

// connectAs joins cfg.NATS, or starts the embedded server. tempStore
// puts the embedded store in a fresh temporary folder (removed on Close).
//
// An embedded server in the data folder (run's) gets fresh users, one
// per role, unless cfg.NoNATSAuth; their passwords are written to
// cfg.credentialsPath() (0600) while it runs when it listens on TCP, and
// this connection is the administrator. With tempStore (a replay's own
// in-process server, no listener) there are no users.
//
// Joining cfg.NATS, the credentials are those of cfg.NATSAuth and the
// LUNGSEG_NATS_* variables; when they name none and a credentials file
// exists (or cfg.NATSCredentials is set), the connection uses role from
// it, and a role other than admin does not create the streams.
func connectAs(ctx context.Context, cfg *Config, name, role string, tempStore bool, log zerolog.Logger) (*node, error) {
	n := &node{}
	var err error
	if cfg.NATS != "" {
		auth := cfg.NATSAuth.WithEnv()
		opts, err := auth.NATSOptions()
		if err != nil {
			return nil, fmt.Errorf("NATS credentials: %w", err)
		}
		if !auth.HasAuth() {
			path := cfg.credentialsPath()
			if _, serr := os.Stat(path); serr == nil || cfg.NATSCredentials != "" {
				opt, err := natsauth.FileOption(path, role)
				if err != nil {
					return nil, fmt.Errorf("NATS credentials: %w", err)
				}
				opts = append(opts, opt)
				n.limited = role != natsauth.RoleAdmin
				log.Info().Str("file", path).Str("role", role).Msg("NATS credentials from file")
			}
		}
		if n.nc, err = bus.Connect(cfg.NATS, name, opts...); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := bus.WaitConnected(wctx, n.nc); err != nil {
			n.Close()
			if lerr := n.nc.LastError(); lerr != nil {
				return nil, fmt.Errorf("%w (%v)", err, lerr)
			}
			return nil, err
		}
		log.Info().Str("url", n.nc.ConnectedUrlRedacted()).Msg("connected to NATS")
	} else {
		dir := cfg.DataDir
		if tempStore {
			if n.tmp, err = os.MkdirTemp("", "lungseg-js-"); err != nil {
				return nil, err
			}
			dir = n.tmp
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		eo := bus.EmbeddedOptions{StoreDir: dir, Listen: cfg.Listen, SyncAlways: cfg.SyncAlways}
		if !tempStore && !cfg.NoNATSAuth {
			if n.creds, err = natsauth.GenerateCredentials(); err != nil {
				return nil, err
			}
			if eo.Users, err = n.creds.ServerUsers(); err != nil {
				return nil, err
			}
		}
		n.srv, err = bus.StartEmbedded(eo)
		if err != nil {
			n.Close()
			return nil, err
		}
		var extra []nats.Option
		if n.creds != nil {
			o, err := n.creds.Options(natsauth.RoleAdmin)
			if err != nil {
				n.Close()
				return nil, err
			}
			extra = append(extra, nats.UserInfo(o.User, o.Password))
		}
		if n.nc, err = bus.ConnectEmbedded(n.srv, name, extra...); err != nil {
			n.Close()
			return nil, err
		}
		ev := log.Info().Str("store", dir)
		if cfg.Listen != "" {
			ev = ev.Str("url", n.srv.ClientURL())
			if n.creds == nil {
				warnExposed(log, "embedded NATS server", cfg.Listen, false,
					"--no-nats-auth: any process that reaches it may submit jobs and delete streams")
			}
		}
		ev.Bool("auth", n.creds != nil).Msg("embedded NATS JetStream started")
	}
	if n.js, err = bus.JetStream(n.nc); err != nil {
		n.Close()
		return nil, err
	}
	if cfg.ensureStreams() && !n.limited {
		if err := bus.EnsureStreams(ctx, n.js, cfg.streamOptions()); err != nil {
			n.Close()
			return nil, err
		}
	}
	if n.creds != nil && cfg.Listen != "" {
		// Written once the streams exist, so that a client that finds
		// the file finds them too.
		n.creds.URL = n.srv.ClientURL()
		path := cfg.credentialsPath()
		if err := natsauth.WriteCredentials(path, n.creds); err != nil {
			n.Close()
			return nil, err
		}
		n.credsFile = path
		log.Info().Str("credentials", path).Msg("NATS credentials of this run written (mode 0600)")
	}
	return n, nil
}

func pipelineConfig(cfg *Config, stages []string) (pipeline.Config, error) {
	reg, err := model.OpenRegistry(cfg.ModelsDir)
	if err != nil {
		return pipeline.Config{}, err
	}
	roots, err := ingest.NewRoots(cfg.InputRoots...)
	if err != nil {
		return pipeline.Config{}, err
	}
	return pipeline.Config{
		Registry:        reg,
		Stages:          stages,
		Models:          cfg.Models,
		Defaults:        cfg.Defaults,
		Workers:         cfg.Workers,
		Infer:           cfg.inferOptions(),
		TTA:             cfg.TTA,
		NoLungField:     cfg.NoLungField,
		Formats:         formats.All(),
		Streams:         cfg.streamOptions(),
		SkipStreamSetup: !cfg.ensureStreams(),
		AckWait:         time.Duration(cfg.AckWait),
		MaxBacklog:      max(cfg.MaxBacklogMB<<20, -1),
		Findings:        cfg.findingsConfig(),
		Batch:           segment.BatchOptions{MaxBatch: cfg.BatchMax, MaxWait: time.Duration(cfg.BatchWait)},
		Webhooks:        cfg.webhookConfigs(),
		TrainCopies:     cfg.TrainCopies,
		TrainSeed:       cfg.TrainSeed,
		InputRoots:      roots,
	}, nil
}

func cmdRun(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	load := commonFlags(fs)
	stages := fs.String("stages", "all", "stages to run in this process (comma-separated), or none to serve only the embedded NATS server")
	webAddr := fs.String("web", web.DefaultAddr, "viewer, /metrics and /healthz address (\"\" to disable)")
	webToken := fs.String("web-token", os.Getenv("LUNGSEG_WEB_TOKEN"), "token the viewer and /metrics require (default $LUNGSEG_WEB_TOKEN; empty: none)")
	webCert := fs.String("web-tls-cert", "", "serve the viewer and /metrics over HTTPS with this certificate (PEM)")
	webKey := fs.String("web-tls-key", "", "the certificate's key (PEM)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel, os.Stderr)
	var list []string
	switch *stages {
	case "all", "":
	case "none":
	default:
		list = strings.Split(*stages, ",")
	}
	pc, err := pipelineConfig(cfg, list)
	if err != nil {
		return err
	}
	n, err := connect(ctx, cfg, "lungseg-run", false, log)
	if err != nil {
		return err
	}
	defer n.Close()
	served, err := pc.Registry.Resolve(pc.Models)
	if err != nil {
		return err
	}
	if *webAddr != "" {
		warnExposed(log, "viewer and /metrics", *webAddr, *webToken != "", "set --web-token or LUNGSEG_WEB_TOKEN")
	}
	wctx, stopWeb := context.WithCancel(ctx)
	wh, err := startWeb(wctx, n.js, webOptions{Addr: *webAddr, Token: *webToken, TLSCert: *webCert, TLSKey: *webKey, Models: served}, log)
	if err != nil {
		stopWeb()
		return err
	}
	defer func() { stopWeb(); _ = wh.Wait() }()
	pc.Hooks = wh.Metrics.Hooks()
	// Dead letters: copy each message that exhausted its deliveries, or
	// was terminated, into the DLQ stream with the reason.
	if cfg.ensureStreams() {
		if err := dlq.Ensure(ctx, n.js, cfg.streamOptions()); err != nil {
			return err
		}
	}
	go func() {
		if err := (&dlq.Capturer{JS: n.js, Log: log}).Run(ctx); err != nil && ctx.Err() == nil {
			log.Error().Err(err).Msg("dead-letter capture stopped")
		}
	}()
	if *stages == "none" {
		<-ctx.Done()
		return nil
	}
	if n.creds != nil {
		// Each stage as its own user, with its role's permissions.
		return runAsRoles(ctx, n, pc, log)
	}
	return pipeline.Run(ctx, n.js, pc, log)
}

func stageCmd(name string) func(ctx context.Context, args []string) error {
	return func(ctx context.Context, args []string) error {
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		load := commonFlags(fs, flagsModels, flagsPipeline, flagsRoots)
		workers := fs.Int("workers", 1, "concurrent workers in this process")
		models := fs.String("models", "", "segment, refine: models to serve (comma-separated or all; refine serves the \"+crop\" cascades among them)")
		metricsAddr := fs.String("metrics", "", "serve /metrics and /healthz on this address (\"\": off)")
		metricsToken := fs.String("metrics-token", os.Getenv("LUNGSEG_WEB_TOKEN"), "token /metrics requires (default $LUNGSEG_WEB_TOKEN)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		cfg, err := load()
		if err != nil {
			return err
		}
		if cfg.NATS == "" {
			return errors.New("a single stage needs --nats URL (use 'lungseg run' for the embedded server)")
		}
		if *models != "" {
			cfg.Models = strings.Split(*models, ",")
		}
		cfg.Workers[name] = *workers
		log := newLogger(cfg.LogLevel, os.Stderr)
		pc, err := pipelineConfig(cfg, []string{name})
		if err != nil {
			return err
		}
		n, err := connectAs(ctx, cfg, "lungseg-"+name, name, false, log)
		if err != nil {
			return err
		}
		defer n.Close()
		if n.limited {
			pc.SkipStreamSetup = true
		}
		if *metricsAddr != "" {
			warnExposed(log, "/metrics", *metricsAddr, *metricsToken != "", "set --metrics-token or LUNGSEG_WEB_TOKEN")
			wh, err := startWeb(ctx, n.js, webOptions{}, log) // collectors only
			if err != nil {
				return err
			}
			pc.Hooks = wh.Metrics.Hooks()
			var served []string
			if name == pipeline.Segment {
				if served, err = pc.Registry.Resolve(pc.Models); err != nil {
					return err
				}
			}
			if _, err := serveMetrics(ctx, n.js, *metricsAddr, httpsec.Options{Token: *metricsToken}, wh.Registry, served, log); err != nil {
				return err
			}
		}
		return pipeline.Run(ctx, n.js, pc, log)
	}
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdReplay(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	load := commonFlags(fs, flagsModels, flagsStore, flagsPipeline)
	var models stringList
	fs.Var(&models, "model", "model to run (repeatable, comma-separated, or all); default: the configured default models")
	masks := fs.String("masks", "", "folder of ground-truth PNGs for DICOM inputs (same relative path, .png)")
	reportPath := fs.String("report", "", "write the JSON report to this file")
	masksOut := fs.String("masks-out", "", "write each predicted mask as DIR/MODEL/<slice id>.png")
	timeout := fs.Duration("timeout", 0, "give up waiting for results after this long (0: never)")
	tta := fs.String("tta-compare", "", "\"both\": also run every chosen model with flip test-time augmentation, reported as MODEL+tta")
	seriesPerInput := fs.Bool("series-per-input", false, "make the slices of each input that have no series of their own (pickle rows without a series column, PNG pairs) one series, so findings group nodules across them")
	findingsWait := fs.Duration("findings-wait", 30*time.Second, "after the scores, wait this long without news for the findings (negative: do not wait)")
	segOut := fs.String("seg-out", "", "write a DICOM SEG and a TID 1500 SR per DICOM series and model as DIR/<replay>/<model>/<series>.dcm and .sr.dcm")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lungseg replay [flags] INPUT...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no inputs")
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	switch *tta {
	case "":
	case "both":
		models = withTTA(models)
	default:
		return fmt.Errorf("--tta-compare %q: want \"both\"", *tta)
	}
	return doReplay(ctx, cfg, replayArgs{inputs: fs.Args(), models: models, masks: *masks, report: *reportPath, masksOut: *masksOut, timeout: *timeout,
		seriesPerInput: *seriesPerInput, findingsWait: *findingsWait, segOut: *segOut})
}

// withTTA adds the TTA variant of every selected model ("all" when none
// is selected).
func withTTA(models []string) []string {
	if len(models) == 0 {
		models = []string{"all"}
	}
	out := append([]string(nil), models...)
	for _, m := range models {
		for _, p := range strings.Split(m, ",") {
			if p = strings.TrimSpace(p); p != "" && !strings.HasSuffix(p, model.TTASuffix) {
				out = append(out, p+model.TTASuffix)
			}
		}
	}
	return out
}

type replayArgs struct {
	inputs                  []string
	models                  []string
	masks, report, masksOut string
	timeout                 time.Duration
	dataDirSet              bool
	seriesPerInput          bool
	findingsWait            time.Duration
	segOut                  string
}

func doReplay(ctx context.Context, cfg *Config, a replayArgs) error {
	log := newLogger(cfg.LogLevel, stderr)
	var inputs []string
	for _, in := range a.inputs {
		abs, err := filepath.Abs(in)
		if err != nil {
			return err
		}
		inputs = append(inputs, abs)
	}
	masks := a.masks
	if masks != "" {
		var err error
		if masks, err = filepath.Abs(masks); err != nil {
			return err
		}
	} else if masks = siblingMasks(inputs); masks != "" {
		log.Info().Str("masks", masks).Msg("ground truth for DICOM inputs: the masks/ folder found with the inputs (--masks DIR to choose another)")
	} else {
		log.Info().Msg("no --masks and no masks/ folder with the inputs: DICOM slices will have no ground truth and no Dice (pickles and PNG pairs carry their own)")
	}
	embedded := cfg.NATS == ""
	if embedded {
		// A replay of its own: in-process server in a temporary store,
		// every stage in this process.
		cfg.Listen = ""
	}
	n, err := connectAs(ctx, cfg, "lungseg-replay", natsauth.RoleReplay, embedded, log)
	if err != nil {
		return err
	}
	defer n.Close()
	if embedded {
		pc, err := pipelineConfig(cfg, nil)
		if err != nil {
			return err
		}
		// Its own pipeline reads its own inputs (and the configured
		// roots).
		own := append(append([]string(nil), cfg.InputRoots...), inputs...)
		if masks != "" {
			own = append(own, masks)
		}
		if pc.InputRoots, err = ingest.NewRoots(own...); err != nil {
			return err
		}
		if len(a.models) > 0 {
			if pc.Models, err = pc.Registry.Resolve(a.models); err != nil {
				return err
			}
		}
		pctx, stop := context.WithCancel(ctx)
		perr := make(chan error, 1)
		go func() { perr <- pipeline.Run(pctx, n.js, pc, log) }()
		defer func() {
			stop()
			// A stage stuck in a system call must not keep the replay
			// from ending once its report is written.
			select {
			case <-perr:
			case <-time.After(shutdownGrace):
				log.Warn().Dur("waited_ms", shutdownGrace).Msg("the pipeline did not stop; exiting without waiting for it")
			}
		}()
	}
	writeMask := func(*lungsegv1.Score) error { return nil }
	if a.masksOut != "" {
		writeMask = maskWriter(a.masksOut)
	}
	cats := newCategoryTable(cfg.findingsConfig())
	segs := newSEGFiles(a.segOut, cfg.findingsConfig(), log)
	onScore := func(s *lungsegv1.Score) error {
		if err := cats.add(s); err != nil {
			return err
		}
		segs.add(s)
		return writeMask(s)
	}
	rep, err := replay.Run(ctx, n.js, replay.Options{
		Inputs: inputs, Models: a.models, MasksDir: masks, Timeout: a.timeout,
		Progress: progress.New(stderr, progress.Options{Label: "replay", Unit: "results"}), OnScore: onScore,
		SeriesPerInput: a.seriesPerInput, FindingsWait: a.findingsWait,
	}, log)
	if werr := segs.write(ctx); werr != nil && err == nil {
		err = werr
	}
	if rep != nil {
		rep.Categories = cats.tables()
		// the findings first, the results table last: it is what a
		// terminal still shows when the replay ends
		printNodules(os.Stdout, rep)
		cats.print(os.Stdout)
		printReport(rep)
		if a.report != "" {
			if werr := writeJSON(a.report, rep); werr != nil && err == nil {
				err = werr
			}
		}
	}
	return err
}

// writeJSON writes v as indented JSON, with "<" and ">" as they are (the
// size bins "<6" and ">20" stay readable).
func writeJSON(path string, v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// siblingMasks returns the ground-truth folder a replay picks up when
// --masks is not given: masks/ inside an input folder (where
// `lungseg phantom --format dicom` writes it), else masks/ beside an input;
// the first found, or "".
func siblingMasks(inputs []string) string {
	isDir := func(p string) bool { st, err := os.Stat(p); return err == nil && st.IsDir() }
	for _, in := range inputs {
		if isDir(in) && isDir(filepath.Join(in, phantom.MasksDir)) {
			return filepath.Join(in, phantom.MasksDir)
		}
	}
	for _, in := range inputs {
		if d := filepath.Join(filepath.Dir(in), phantom.MasksDir); d != in && isDir(d) {
			return d
		}
	}
	return ""
}
