package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/lungseg/lungseg/pkg/bus"
	"os"

	"github.com/lungseg/lungseg/deploy"
	"github.com/lungseg/lungseg/pkg/model"
)

// cmdStreams prints or applies the JetStream definitions (streams and the
// stages' durable consumers): lungseg streams print|apply.
func cmdStreams(ctx context.Context, args []string) error {
	if len(args) == 0 || isHelp(args[0]) {
		fmt.Fprintln(os.Stderr, "usage: lungseg streams print|apply [flags]\n\nprint writes the stream and consumer definitions as JSON; apply creates them on --nats URL.\nRun 'lungseg streams SUBCOMMAND -h' for its flags.")
		if len(args) > 0 {
			return flag.ErrHelp
		}
		return errors.New("no subcommand")
	}
	sub := args[0]
	fs := flag.NewFlagSet("streams "+sub, flag.ContinueOnError)
	load := commonFlags(fs, flagsModels)
	consumers := fs.Bool("consumers", true, "apply: also create the stages' durable consumers (one segment consumer per registry model)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	so := cfg.streamOptions()
	var models, cascades []string
	if reg, err := model.OpenRegistry(cfg.ModelsDir); err == nil {
		models, cascades = reg.AllNames(), reg.Cascades()
	} else if sub == "apply" && *consumers {
		return err
	}
	switch sub {
	case "print":
		return writeJSONTo(os.Stdout, map[string]any{"streams": deploy.Streams(so), "consumers": deploy.Consumers(models, cascades)})
	case "apply":
		if cfg.NATS == "" {
			return errors.New("streams apply needs --nats URL")
		}
		log := newLogger(cfg.LogLevel, os.Stderr)
		n, err := connect(ctx, cfg, "lungseg-streams", false, log)
		if err != nil {
			return err
		}
		defer n.Close()
		for _, s := range deploy.Streams(so) {
			if _, err := n.js.CreateOrUpdateStream(ctx, s); err != nil {
				return fmt.Errorf("stream %s: %w", s.Name, err)
			}
			log.Info().Str("stream", s.Name).Int("replicas", s.Replicas).Msg("stream applied")
		}
		if _, err := bus.PixelStore(ctx, n.js, so); err != nil {
			return err
		}
		log.Info().Str("bucket", bus.PixelsBucket).Msg("object store applied")
		if _, err := bus.ProgressStore(ctx, n.js, so); err != nil {
			return err
		}
		log.Info().Str("bucket", bus.IngestProgressBucket).Msg("ingest progress bucket applied")
		if *consumers {
			for _, c := range deploy.Consumers(models, cascades) {
				if _, err := n.js.CreateOrUpdateConsumer(ctx, c.Stream, c.Config); err != nil {
					return fmt.Errorf("consumer %s on %s: %w", c.Config.Durable, c.Stream, err)
				}
				log.Info().Str("stream", c.Stream).Str("consumer", c.Config.Durable).Msg("consumer applied")
			}
		}
		return nil
	}
	return fmt.Errorf("streams: unknown subcommand %q (want print or apply)", sub)
}
