// Command lungseg runs the lung nodule segmentation pipeline: all stages
// with an embedded NATS server (run), one stage against a NATS cluster
// (ingest, preprocess, segment, refine, score, findings), replays of
// labelled data (replay, demo), and tools (models, phantom).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
)

type command struct {
	name, usage string
	run         func(ctx context.Context, args []string) error
}

var commands []command

func usage() {
	fmt.Fprintf(os.Stderr, "usage: lungseg COMMAND [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-11s %s\n", c.name, c.usage)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'lungseg COMMAND -h' for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signalContext(os.Stderr, shutdownGrace)
	defer stop()
	name := os.Args[1]
	for _, c := range commands {
		if c.name == name {
			err := c.run(ctx, os.Args[2:])
			if err == nil || errors.Is(err, flag.ErrHelp) {
				return
			}
			fmt.Fprintf(os.Stderr, "lungseg %s: %v\n", name, err)
			os.Exit(1)
		}
	}
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	fmt.Fprintf(os.Stderr, "lungseg: unknown command %q\n\n", name)
	usage()
	os.Exit(2)
}

// isHelp reports whether a command line word asks for help.
func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "help" }
