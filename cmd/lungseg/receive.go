package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/httpsec"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/lungseg/lungseg/ingest/dicomweb"
	"github.com/lungseg/lungseg/ingest/dimse"
	"github.com/lungseg/lungseg/ingest/watch"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/natsauth"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/lungseg/lungseg/score/seg"
)

// cmdReceive runs the DICOM receivers (STOW-RS, C-STORE SCP, watched
// folder) that publish received CT slices on lung.slices.raw, and the SEG
// collector that turns the scores of each received series into a DICOM
// SEG and a TID 1500 measurement report (SR) per model (optionally stored
// back with STOW-RS).
func cmdReceive(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("receive", flag.ContinueOnError)
	load := commonFlags(fs, flagsModels, flagsStore, flagsServer)
	httpAddr := fs.String("stow", "127.0.0.1:8042", "STOW-RS listen address (\"\" for none); POST /dicomweb/studies")
	stowToken := fs.String("stow-token", os.Getenv("LUNGSEG_STOW_TOKEN"), "bearer token STOW-RS requires (default $LUNGSEG_STOW_TOKEN; empty: none)")
	stowCert := fs.String("stow-tls-cert", "", "serve STOW-RS over HTTPS with this certificate (PEM)")
	stowKey := fs.String("stow-tls-key", "", "the certificate's key (PEM)")
	dimseAddr := fs.String("dimse", "127.0.0.1:11112", "C-STORE SCP listen address (\"\" for none)")
	aeTitle := fs.String("ae-title", "LUNGSEG", "the SCP's AE title")
	allowAE := fs.String("allow-ae", "", "comma-separated calling AE titles allowed (empty: any)")
	watchDir := fs.String("watch", "", "watched folder of exported DICOM files (\"\" for none)")
	models := fs.String("models", "all", "comma-separated models to run on received slices")
	segQuiet := fs.Duration("seg-quiet", 10*time.Second, "write a series' SEG once no score arrived for this long (0: no SEG)")
	stowURL := fs.String("seg-stow", "", "DICOMweb service root to store SEGs and SRs on (e.g. http://pacs/dicom-web)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel, os.Stderr)
	reg, err := model.OpenRegistry(cfg.ModelsDir)
	if err != nil {
		return err
	}
	names, err := reg.Resolve(strings.Split(*models, ","))
	if err != nil {
		return err
	}
	n, err := connectAs(ctx, cfg, "lungseg-receive", natsauth.RoleReceive, false, log)
	if err != nil {
		return err
	}
	defer n.Close()
	return runReceivers(ctx, receiveConfig{
		acc:  &dicomweb.Acceptor{JS: n.js, Models: names, Log: log},
		http: *httpAddr, httpSec: httpsec.Options{Token: *stowToken, CertFile: *stowCert, KeyFile: *stowKey}, dimse: *dimseAddr, ae: *aeTitle, allow: splitList(*allowAE),
		watch: *watchDir, segQuiet: *segQuiet, stowURL: *stowURL, findingsCfg: cfg.findingsConfig(),
	}, log)
}

type receiveConfig struct {
	acc             *dicomweb.Acceptor
	http, dimse, ae string
	httpSec         httpsec.Options
	allow           []string
	watch           string
	segQuiet        time.Duration
	stowURL         string
	// findingsCfg is the findings stage's configuration: the SR's nodules
	// are grouped with it, so they are the findings'.
	findingsCfg findings.Config
	ready       func(httpAddr, dimseAddr net.Addr) // for tests
}

func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// runReceivers serves until ctx ends. Each receiver gets its own copy of
// the acceptor with its SliceMeta.Source.
func runReceivers(ctx context.Context, rc receiveConfig, log zerolog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	if rc.acc.Studies == nil {
		kv, err := bus.StudyStore(ctx, rc.acc.JS, bus.StreamOptions{})
		if err != nil {
			return err
		}
		rc.acc.Studies = kv
	}
	withSource := func(src string) *dicomweb.Acceptor {
		a := *rc.acc
		a.Source = src
		a.Log = log.With().Str("receiver", src).Logger()
		return &a
	}
	var httpAddr, dimseAddr net.Addr
	if rc.http != "" {
		ln, err := rc.httpSec.Listen(rc.http)
		if err != nil {
			return err
		}
		httpAddr = ln.Addr()
		mux := http.NewServeMux()
		dicomweb.NewServer(withSource("dicomweb"), "/dicomweb").Register(mux)
		warnExposed(log, "STOW-RS", rc.http, rc.httpSec.Token != "", "set --stow-token or LUNGSEG_STOW_TOKEN")
		// Bodies are read under dicomweb's idle timeout and minimum rate;
		// headers must come within 10 s and idle keep-alive connections
		// are closed after a minute.
		srv := &http.Server{Handler: rc.httpSec.Require(mux), ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout: time.Minute, MaxHeaderBytes: 64 << 10}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("STOW-RS: %w", err)
			}
		}()
		go func() { <-ctx.Done(); srv.Close() }()
		log.Info().Str("addr", ln.Addr().String()).Msg("STOW-RS listening on /dicomweb/studies")
	}
	if rc.dimse != "" {
		hint := "DIMSE has no authentication here: keep the SCP on a trusted network or behind a TLS tunnel, and set --allow-ae"
		if len(rc.allow) > 0 {
			hint = "calling AE titles (--allow-ae) are not authentication: keep the SCP on a trusted network or behind a TLS tunnel"
		}
		warnExposed(log, "C-STORE SCP", rc.dimse, false, hint)
		acc := withSource("dimse")
		scp, err := dimse.New(dimse.Config{AETitle: rc.ae, AllowedCallingAEs: rc.allow}, func(ctx context.Context, r *dimse.StoreRequest) (uint16, error) {
			_, err := acc.Accept(ctx, "C-STORE from "+r.CallingAE, r.Part10(), "")
			return dicomweb.FailureReason(err), err
		}, log.With().Str("receiver", "dimse").Logger())
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", rc.dimse)
		if err != nil {
			return err
		}
		dimseAddr = ln.Addr()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := scp.Serve(ln); err != nil {
				errs <- fmt.Errorf("C-STORE SCP: %w", err)
			}
		}()
		go func() { <-ctx.Done(); scp.Close() }()
		log.Info().Str("addr", ln.Addr().String()).Str("ae_title", rc.ae).Msg("C-STORE SCP listening")
	}
	if rc.watch != "" {
		acc := withSource("watch")
		w := &watch.Watcher{Dir: rc.watch, Log: log.With().Str("receiver", "watch").Logger(),
			Accept: func(ctx context.Context, name string, b []byte) (bool, error) {
				_, err := acc.Accept(ctx, name, b, "")
				var rej *dicomweb.Rejection
				return errors.As(err, &rej) && rej.Permanent, err
			}}
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
		log.Info().Str("dir", rc.watch).Msg("watching folder")
	}
	if rc.segQuiet > 0 {
		col := &seg.Collector{JS: rc.acc.JS, Quiet: rc.segQuiet, Studies: rc.acc.Studies, Findings: rc.findingsCfg,
			Log: log.With().Str("stage", seg.StageName).Logger()}
		if rc.stowURL != "" {
			cl := &dicomweb.Client{BaseURL: rc.stowURL}
			col.Store = func(ctx context.Context, study string, b []byte) error {
				_, err := cl.Store(ctx, study, b)
				return err
			}
		}
		r, err := stage.New(rc.acc.JS, seg.RunnerConfig(), col, log)
		if err != nil {
			return err
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := r.Run(ctx); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("SEG collector: %w", err)
			}
		}()
		go func() { defer wg.Done(); col.Run(ctx) }()
	}
	if rc.ready != nil {
		rc.ready(httpAddr, dimseAddr)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	cancel()
	wg.Wait()
	return err
}
