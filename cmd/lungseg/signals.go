package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// shutdownGrace is how long a process may take to stop after SIGINT or
// SIGTERM before it exits anyway, so that no stage blocked in a system
// call (an open() of a named pipe, a hung network mount) can keep it
// alive.
const shutdownGrace = 10 * time.Second

// signalContext returns a context that the first SIGINT or SIGTERM
// cancels, so that commands stop in order (stages drain, replay writes its
// report). If the process is still running grace later, or a second signal
// comes, it exits with status 128+signal. stop releases the signals; call
// it when the command has returned.
func signalContext(w io.Writer, grace time.Duration) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	quit := make(chan struct{})
	go func() {
		var s os.Signal
		select {
		case s = <-ch:
		case <-quit:
			return
		}
		fmt.Fprintf(w, "lungseg: %s: stopping (exit in at most %v; a second signal exits at once)\n", signalName(s), grace)
		cancel()
		t := time.NewTimer(grace)
		select {
		case s2 := <-ch:
			fmt.Fprintf(w, "lungseg: %s again: exiting now\n", signalName(s2))
		case <-t.C:
			fmt.Fprintf(w, "lungseg: still running %v after %s: exiting\n", grace, signalName(s))
		case <-quit:
			return
		}
		os.Exit(signalStatus(s))
	}()
	var once bool
	return ctx, func() {
		if !once {
			once = true
			signal.Stop(ch)
			close(quit)
			cancel()
		}
	}
}

// signalStatus is the shell's exit status for a process ended by s.
func signalStatus(s os.Signal) int {
	if n, ok := s.(syscall.Signal); ok {
		return 128 + int(n)
	}
	return 1
}

// signalName is SIGINT or SIGTERM.
func signalName(s os.Signal) string {
	switch s {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}
