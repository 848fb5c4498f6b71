package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/lungseg/lungseg/internal/dlq"
	"github.com/lungseg/lungseg/pkg/natsauth"
)

// cmdDLQ inspects and re-drives dead letters: lungseg dlq list|replay|watch.
func cmdDLQ(ctx context.Context, args []string) error {
	if len(args) == 0 || isHelp(args[0]) {
		fmt.Fprintln(os.Stderr, "usage: lungseg dlq list|replay|watch [flags] (--nats URL is required)\n\nRun 'lungseg dlq SUBCOMMAND -h' for its flags.")
		if len(args) > 0 {
			return flag.ErrHelp
		}
		return errors.New("no subcommand")
	}
	sub := args[0]
	fs := flag.NewFlagSet("dlq "+sub, flag.ContinueOnError)
	load := commonFlags(fs, 0) // connection flags only
	stream := fs.String("stream", "", "only dead letters of this stream (e.g. READY)")
	consumer := fs.String("consumer", "", "only dead letters of this consumer (e.g. segment-unetr-small)")
	replayID := fs.String("replay", "", "only dead letters of this replay id")
	asJSON := fs.Bool("json", false, "list: print JSON")
	keep := fs.Bool("keep", false, "replay: keep the dead letters after republishing them")
	all := fs.Bool("all", false, "replay: every dead letter that matches the filters")
	skipTerm := fs.Bool("skip-terminated", false, "watch: capture only max-deliveries advisories, not messages the runners terminated")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lungseg dlq list [flags] | dlq replay [flags] (--all | SEQ...) | dlq watch [flags]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	if cfg.NATS == "" {
		return errors.New("dlq needs --nats URL")
	}
	log := newLogger(cfg.LogLevel, os.Stderr)
	n, err := connectAs(ctx, cfg, "lungseg-dlq", natsauth.RoleDLQ, false, log)
	if err != nil {
		return err
	}
	defer n.Close()
	if !n.limited { // the dlq role may not create streams: run made it
		if err := dlq.Ensure(ctx, n.js, cfg.streamOptions()); err != nil {
			return err
		}
	}
	filter := dlq.Filter{Stream: *stream, Consumer: *consumer, Replay: *replayID}
	switch sub {
	case "watch":
		c := &dlq.Capturer{JS: n.js, Log: log, SkipTerminated: *skipTerm}
		return c.Run(ctx)
	case "list":
		es, err := dlq.List(ctx, n.js, filter)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSONTo(os.Stdout, es)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tSTREAM\tSEQ@STREAM\tCONSUMER\tDELIVERIES\tSLICE\tREPLAY\tMODEL\tBYTES\tREASON")
		for _, e := range es {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%d\t%s\n", e.Seq, e.Time.Format("2006-01-02 15:04:05"), e.Kind,
				e.Stream, e.StreamSeq, e.Consumer, e.Deliveries, dash(e.SliceID), dash(e.ReplayID), dash(e.Model), e.Bytes, e.Reason)
		}
		return tw.Flush()
	case "replay":
		var seqs []uint64
		for _, a := range fs.Args() {
			s, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				return fmt.Errorf("dead-letter sequence %q: %w", a, err)
			}
			seqs = append(seqs, s)
		}
		if len(seqs) == 0 && !*all {
			return errors.New("dlq replay: give dead-letter sequences or --all")
		}
		if len(seqs) > 0 && *all {
			return errors.New("dlq replay: sequences and --all exclude each other")
		}
		k, err := dlq.Replay(ctx, n.js, dlq.ReplayOptions{Seqs: seqs, Filter: filter, Keep: *keep})
		fmt.Printf("re-drove %d dead letter(s)\n", k)
		return err
	}
	return fmt.Errorf("dlq: unknown subcommand %q (want list, replay or watch)", sub)
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

func writeJSONTo(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
