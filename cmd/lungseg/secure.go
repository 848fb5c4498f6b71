package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/natsauth"
	"github.com/lungseg/lungseg/score/findings"
)

// loopback reports whether a listen address (host:port) binds only to
// the loopback interface; an empty host, 0.0.0.0 and :: bind to all.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// warnExposed logs a warning when a listener binds beyond the loopback
// interface without authentication; hint says what to set.
func warnExposed(log zerolog.Logger, what, addr string, authenticated bool, hint string) {
	if authenticated || loopback(addr) {
		return
	}
	log.Warn().Str("listener", what).Str("addr", addr).
		Msgf("%s listens on %s, beyond this machine, without authentication: %s", what, addr, hint)
}

// runAsRoles runs each stage of pc on its own in-process connection as
// the NATS user of its role, so that a stage can publish and subscribe
// only where its role allows. The pixel and findings buckets are made
// first as the administrator (the stage users may not create streams).
func runAsRoles(ctx context.Context, n *node, pc pipeline.Config, log zerolog.Logger) error {
	stages := pc.Stages
	if len(stages) == 0 {
		stages = pipeline.AllStages
	}
	if _, err := bus.PixelStore(ctx, n.js, pc.Streams); err != nil {
		return err
	}
	for _, st := range stages {
		if st == pipeline.Findings {
			// Opens or creates the series bucket the way the stage does.
			if _, err := findings.New(ctx, n.js, pc.Findings, nil, log); err != nil {
				return err
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(stages))
	var wg sync.WaitGroup
	for _, st := range stages {
		// The stage names are the role names (pkg/natsauth).
		js, err := n.as(st, "lungseg-run-"+st)
		if err != nil {
			return err
		}
		c := pc
		c.Stages, c.SkipStreamSetup = []string{st}, true
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pipeline.Run(ctx, js, c, log); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", st, err)
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	wg.Wait()
	return err
}

// defaultCredentialsPath is the credentials file of `run` with the
// default data folder.
func defaultCredentialsPath() string {
	c := defaultConfig()
	return c.credentialsPath()
}

// toolCredentials returns the connection options of a tool without the
// common flags (tail): the role's password from path, or from the
// default credentials file when path is empty and the file exists; none
// otherwise (LUNGSEG_NATS_* variables still apply).
func toolCredentials(path, role string) ([]nats.Option, error) {
	auth := natsauth.Options{}.WithEnv()
	base, err := auth.NATSOptions()
	if err != nil || auth.HasAuth() {
		return base, err
	}
	if path == "" {
		path = defaultCredentialsPath()
		if _, err := os.Stat(path); err != nil {
			return base, nil
		}
	}
	opt, err := natsauth.FileOption(path, role)
	if err != nil {
		return nil, fmt.Errorf("NATS credentials: %w", err)
	}
	return append(base, opt), nil
}
