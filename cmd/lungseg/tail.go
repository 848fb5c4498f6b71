package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/natsauth"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// cmdTail prints findings (or alerts, or any subject of the FINDINGS and
// ALERTS streams) as they arrive, readably, for a person at a terminal.
func cmdTail(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	url := fs.String("nats", "nats://127.0.0.1:4222", "NATS URL (the address 'lungseg run' listens on by default)")
	all := fs.Bool("all", false, "print what the stream already holds, then new messages")
	slices := fs.Bool("slices", false, "also print per-slice components (lung.findings.slice.>)")
	creds := fs.String("nats-credentials", "", "credentials file of 'lungseg run' (default "+defaultCredentialsPath()+" when it exists)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lungseg tail [flags] [SUBJECT]")
		fmt.Fprintln(fs.Output(), "SUBJECT defaults to 'lung.findings.>'; e.g. lungseg tail 'lung.alerts.>' or lungseg tail 'lung.findings.LR4B.>'")
		fmt.Fprintln(fs.Output(), "(quote a subject with >: unquoted, the shell reads > as a redirection and creates a file)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return errors.New("tail: at most one subject")
	}
	subject := findings.PrefixFindings + ">"
	if fs.NArg() == 1 {
		subject = fs.Arg(0)
	}
	opts, err := toolCredentials(*creds, natsauth.RoleAdmin)
	if err != nil {
		return err
	}
	nc, err := bus.Connect(*url, "lungseg-tail", opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := bus.WaitConnected(wctx, nc); err != nil {
		return err
	}
	js, err := bus.JetStream(nc)
	if err != nil {
		return err
	}
	return tail(ctx, js, subject, *all, *slices, os.Stdout)
}

// tail prints the messages of subject until ctx ends.
func tail(ctx context.Context, js jetstream.JetStream, subject string, all, slices bool, w io.Writer) error {
	stream, err := js.StreamNameBySubject(ctx, subject)
	if err != nil {
		return fmt.Errorf("tail: no stream holds %s: %w", subject, err)
	}
	policy := jetstream.DeliverNewPolicy
	if all {
		policy = jetstream.DeliverAllPolicy
	}
	lines := make(chan string, 64)
	cc, err := bus.Follow(ctx, js, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, DeliverPolicy: policy}, func(m jetstream.Msg) {
		if !slices && strings.HasPrefix(m.Subject(), findings.PrefixFindings+findings.SliceToken+".") &&
			!strings.HasPrefix(subject, findings.PrefixFindings+findings.SliceToken+".") {
			return
		}
		select {
		case lines <- formatMessage(m.Subject(), m.Data()):
		case <-ctx.Done():
		}
	}, bus.FollowOptions{})
	if err != nil {
		return fmt.Errorf("tail: subscribing to %s: %w", subject, err)
	}
	defer cc.Stop()
	for {
		select {
		case l := <-lines:
			if _, err := fmt.Fprintln(w, l); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// formatMessage renders one finding, alert or slice's components in a
// line or a few.
func formatMessage(subject string, data []byte) string {
	switch {
	case strings.HasPrefix(subject, findings.PrefixFindings+findings.SliceToken+"."):
		var sf lungsegv1.SliceFindings
		if err := proto.Unmarshal(data, &sf); err != nil {
			return fmt.Sprintf("%s: undecodable slice findings: %v", subject, err)
		}
		if len(sf.Components) == 0 {
			return fmt.Sprintf("slice %s  %s: no component", sf.GetMeta().GetId(), sf.Model)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "slice %s  %s: %d component(s), largest %s", sf.GetMeta().GetId(), sf.Model, len(sf.Components), sf.Category)
		for _, k := range sf.Components {
			fmt.Fprintf(&b, "\n    #%d %.1f mm, %d px (%.1f mm²) at (%.0f, %.0f)", k.Index, k.DiameterMm, k.AreaPx, k.AreaMm2, k.CentroidRow, k.CentroidCol)
			if k.HuKnown {
				fmt.Fprintf(&b, ", %.0f HU", k.MeanHu)
			}
			if k.ProbKnown {
				fmt.Fprintf(&b, ", p %.2f", k.MeanProb)
			}
		}
		return b.String()
	case strings.HasPrefix(subject, findings.PrefixFindings+findings.FlushedToken+"."):
		var d lungsegv1.FindingsFlushed
		if err := proto.Unmarshal(data, &d); err != nil {
			return fmt.Sprintf("%s: undecodable flush answer: %v", subject, err)
		}
		return fmt.Sprintf("%s  FLUSHED replay %s: %d series completed, %d findings", stamp(d.UnixNano), d.ReplayId, d.Series, d.Findings)
	case strings.HasPrefix(subject, findings.PrefixFindings):
		var f lungsegv1.Finding
		if err := proto.Unmarshal(data, &f); err != nil {
			return fmt.Sprintf("%s: undecodable finding: %v", subject, err)
		}
		return fmt.Sprintf("%s  FINDING %s\n    %s", stamp(f.UnixNano), f.Id, refs(&f))
	case strings.HasPrefix(subject, findings.PrefixAlerts):
		var a lungsegv1.Alert
		if err := proto.Unmarshal(data, &a); err != nil {
			return fmt.Sprintf("%s: undecodable alert: %v", subject, err)
		}
		s := fmt.Sprintf("%s  ALERT %s (at or above %s)", stamp(a.UnixNano), a.Id, a.Threshold)
		if a.Finding != nil {
			s += "\n    " + refs(a.Finding)
		}
		return s
	}
	return fmt.Sprintf("%s: %d bytes", subject, len(data))
}

func stamp(ns int64) string {
	if ns == 0 {
		return "--:--:--"
	}
	return time.Unix(0, ns).Local().Format("15:04:05")
}

// refs is a finding's summary with its study, series and instances.
func refs(f *lungsegv1.Finding) string {
	var b strings.Builder
	b.WriteString(findings.Summary(f))
	if f.Slices > 1 {
		fmt.Fprintf(&b, "\n    slices %s .. %s", f.SliceIds[0], f.SliceIds[len(f.SliceIds)-1])
	}
	if f.StudyUid != "" {
		fmt.Fprintf(&b, "\n    study %s", f.StudyUid)
	}
	if n := len(f.InstanceUids); n > 0 {
		fmt.Fprintf(&b, "\n    instances %s", f.InstanceUids[0])
		if n > 1 {
			fmt.Fprintf(&b, " .. %s (%d)", f.InstanceUids[n-1], n)
		}
	}
	if f.TruthLabel != "" {
		fmt.Fprintf(&b, "\n    dataset label %s", f.TruthLabel)
	}
	if f.ReplayId != "" && f.ReplayId != bus.LiveReplay {
		fmt.Fprintf(&b, "\n    replay %s", f.ReplayId)
	}
	return b.String()
}
