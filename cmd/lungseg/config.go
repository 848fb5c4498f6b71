package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lungseg/lungseg/internal/webhook"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/natsauth"
	"github.com/lungseg/lungseg/pkg/progress"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/rs/zerolog"
)

// Config is the process configuration: a JSON file (--config) with flags
// overriding it.
type Config struct {
	// NATS is the URL of an external NATS server or cluster; empty starts
	// an embedded server.
	NATS string `json:"nats"`
	// DataDir holds the embedded server's JetStream file store.
	DataDir string `json:"data_dir"`
	// Listen is the embedded server's client address ("" for in-process
	// only).
	Listen string `json:"listen"`
	// ModelsDir is the model registry folder.
	ModelsDir string `json:"models_dir"`
	// Models served by segment ("all" or names).
	Models []string `json:"models"`
	// Defaults are the models for slices that name none.
	Defaults []string `json:"default_models"`
	// Provider is the ONNX Runtime execution provider: cpu, cuda, tensorrt.
	Provider string `json:"provider"`
	// Threads is ONNX Runtime's intra-op thread count per session.
	Threads int `json:"threads"`
	// Workers per stage.
	Workers map[string]int `json:"workers"`
	// TTA turns on flip test-time augmentation.
	TTA bool `json:"tta"`
	// NoLungField turns the lung field off: preprocess sends none, so no
	// prediction outside the lungs is removed (for measuring the field).
	NoLungField bool `json:"no_lung_field"`
	// TrainCopies > 0 streams augmented training copies on lung.train.<model>.
	TrainCopies int    `json:"train_copies"`
	TrainSeed   uint64 `json:"train_seed"`
	// SyncAlways makes the embedded server fsync every write.
	SyncAlways bool `json:"sync_always"`
	// Replicas of each stream (3 on a cluster).
	Replicas int `json:"replicas"`
	// MaxAge of stream messages.
	MaxAge Duration `json:"max_age"`
	// LogLevel: debug, info, warn, error.
	LogLevel string `json:"log_level"`
	// BatchMax > 1 groups concurrent segment requests into one model call
	// of up to BatchMax images, waiting at most BatchWait.
	BatchMax  int      `json:"batch_max"`
	BatchWait Duration `json:"batch_wait"`
	// NATSAuth holds credentials and TLS for an external NATS
	// (LUNGSEG_NATS_* environment variables fill what is unset).
	NATSAuth natsauth.Options `json:"nats_auth"`
	// NATSCredentials is the credentials file `run` writes (mode 0600)
	// with the passwords of its embedded server's users, and the other
	// commands read to connect with their role when nats_auth sets no
	// credentials; default <data_dir>/nats-credentials.json.
	NATSCredentials string `json:"nats_credentials"`
	// NoNATSAuth starts the embedded server without users (anyone who
	// reaches its port may do anything).
	NoNATSAuth bool `json:"no_nats_auth"`
	// InputRoots are the folders the ingest stage of `run` and `ingest`
	// may read jobs' paths under; with none, every job naming a path is
	// refused (a replay with its own embedded server allows its inputs).
	InputRoots []string `json:"input_roots"`
	// EnsureStreams creates or updates the streams at start-up (default
	// true); stage users without stream rights set it false.
	EnsureStreams *bool `json:"ensure_streams"`
	// AckWait is the redelivery timeout of the stage consumers (default
	// 30s: after a crash, what the dead process held comes back within it;
	// workers send in-progress heartbeats while they hold a message).
	AckWait Duration `json:"ack_wait"`
	// MaxBacklogMB bounds the megabytes of slices waiting in RAW, READY
	// and MASKS: ingest reads no further while they hold more (0: the
	// default, bus.DefaultMaxBacklog; -1: no bound).
	MaxBacklogMB int64 `json:"max_backlog_mb"`
	// Findings tunes the findings stage.
	Findings FindingsConfig `json:"findings"`
	// Webhooks receive alerts by HTTP POST.
	Webhooks []WebhookConfig `json:"webhooks"`
}

// FindingsConfig is the JSON form of findings.Config; zero fields take its
// defaults.
type FindingsConfig struct {
	MinSizePx          int      `json:"min_size_px"`
	DefaultSpacingMm   float64  `json:"default_spacing_mm"`
	DefaultThicknessMm float64  `json:"default_thickness_mm"`
	QuietPeriod        Duration `json:"quiet_period"`
	AlertAt            string   `json:"alert_at"`
}

// WebhookConfig is the JSON form of webhook.Config.
type WebhookConfig struct {
	Name     string            `json:"name"`
	URL      string            `json:"url"`
	Subjects []string          `json:"subjects"`
	Headers  map[string]string `json:"headers"`
	Timeout  Duration          `json:"timeout"`
}

func (c *Config) ensureStreams() bool { return c.EnsureStreams == nil || *c.EnsureStreams }

func (c *Config) findingsConfig() findings.Config {
	f := c.Findings
	return findings.Config{MinSizePx: f.MinSizePx, DefaultSpacingMm: f.DefaultSpacingMm, DefaultThicknessMm: f.DefaultThicknessMm,
		QuietPeriod: time.Duration(f.QuietPeriod), AlertAt: f.AlertAt}
}

func (c *Config) webhookConfigs() []webhook.Config {
	var out []webhook.Config
	for _, w := range c.Webhooks {
		out = append(out, webhook.Config{Name: w.Name, URL: w.URL, FilterSubjects: w.Subjects, Headers: w.Headers, Timeout: time.Duration(w.Timeout)})
	}
	return out
}

// Duration is a time.Duration read from a JSON string such as "24h".
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

func defaultConfig() Config {
	return Config{
		DataDir:   filepath.Join(".cache", "lungseg-data"),
		Listen:    "127.0.0.1:4222",
		ModelsDir: "", // found by model.FindRegistry
		Models:    []string{"all"},
		Provider:  "cpu",
		Threads:   1,
		Workers:   map[string]int{},
		LogLevel:  "info",
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	switch c.Provider {
	case "cpu", "cuda", "tensorrt":
	default:
		errs = append(errs, fmt.Errorf("provider %q: want cpu, cuda or tensorrt", c.Provider))
	}
	if c.TrainCopies < 0 {
		errs = append(errs, fmt.Errorf("train_copies %d must be ≥ 0", c.TrainCopies))
	}
	if c.Threads < 0 {
		errs = append(errs, fmt.Errorf("threads %d must be ≥ 0", c.Threads))
	}
	if _, err := zerolog.ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, fmt.Errorf("log level %q: %w", c.LogLevel, err))
	}
	if err := c.findingsConfig().WithDefaults().Validate(); err != nil {
		errs = append(errs, err)
	}
	for i, w := range c.Webhooks {
		if w.Name == "" || w.URL == "" {
			errs = append(errs, fmt.Errorf("webhooks[%d]: name and url are required", i))
		}
	}
	if err := c.NATSAuth.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("nats_auth: %w", err))
	}
	return errors.Join(errs...)
}

// credentialsPath is where run writes its server's credentials and
// clients look for them.
func (c *Config) credentialsPath() string {
	if c.NATSCredentials != "" {
		return c.NATSCredentials
	}
	return filepath.Join(c.DataDir, natsauth.CredentialsFile)
}

func (c *Config) inferOptions() infer.Options {
	return infer.Options{Provider: c.Provider, IntraOpThreads: c.Threads}
}

func (c *Config) streamOptions() bus.StreamOptions {
	return bus.StreamOptions{Replicas: c.Replicas, MaxAge: time.Duration(c.MaxAge)}
}

// flagGroup selects which of the shared flags a command offers, so that its
// help lists only flags that do something there.
type flagGroup int

const (
	// flagsModels: --models-dir (the registry is then found by
	// model.FindRegistry when not given).
	flagsModels flagGroup = 1 << iota
	// flagsStore: --data-dir, a JetStream store of the command's own.
	flagsStore
	// flagsServer: --listen, --no-nats-auth and --input-root, for a
	// command that serves its embedded NATS server to other processes.
	flagsServer
	// flagsPipeline: the stages' settings (ONNX Runtime, preprocess,
	// batching, findings, webhooks).
	flagsPipeline
	// flagsRoots: --input-root alone (a stage process's ingest).
	flagsRoots

	flagsAll = flagsModels | flagsStore | flagsServer | flagsPipeline | flagsRoots
)

// commonFlags registers the shared flags of the groups given (every group
// when none is) beside the connection flags every command has (--config,
// --nats, --nats-credentials, --log-level, --check-config), and returns a
// function that loads --config and applies the flags set on top of it.
func commonFlags(fs *flag.FlagSet, groups ...flagGroup) func() (*Config, error) {
	g := flagsAll
	if len(groups) > 0 {
		g = 0
		for _, x := range groups {
			g |= x
		}
	}
	has := func(x flagGroup) bool { return g&x != 0 }
	cfgPath := fs.String("config", "", "JSON configuration file (flags override it)")
	d := defaultConfig()
	nats := fs.String("nats", "", "external NATS URL(s); empty runs an embedded server")
	logLevel := fs.String("log-level", d.LogLevel, "log level: debug, info, warn, error")
	check := fs.Bool("check-config", false, "validate the configuration and exit")
	natsCreds := fs.String("nats-credentials", "", "credentials file of run's embedded server (written by run, read by clients; default DATA_DIR/"+natsauth.CredentialsFile+")")
	var (
		dataDir, listen, modelsDir, provider, hook, alertAt *string
		threads, trainCopies, batchMax                      *int
		tta, noField, noNATSAuth                            *bool
		batchWait, quiet                                    *time.Duration
		inputRoots                                          stringList
	)
	if has(flagsStore | flagsServer) {
		dataDir = fs.String("data-dir", d.DataDir, "embedded JetStream store folder")
	}
	if has(flagsServer) {
		listen = fs.String("listen", d.Listen, "embedded server client address (\"\" for in-process only)")
		noNATSAuth = fs.Bool("no-nats-auth", false, "run: start the embedded server without users (anyone reaching it may do anything)")
	}
	if has(flagsServer | flagsRoots) {
		fs.Var(&inputRoots, "input-root", "folder ingest jobs may read under (repeatable; adds to input_roots)")
	}
	if has(flagsModels) {
		modelsDir = fs.String("models-dir", "", "model registry folder (default: $"+model.EnvRegistry+", models/ in the working directory or a parent, or beside the executable)")
	}
	if has(flagsPipeline) {
		provider = fs.String("provider", d.Provider, "ONNX Runtime execution provider: cpu, cuda, tensorrt")
		threads = fs.Int("threads", d.Threads, "ONNX Runtime intra-op threads per model session")
		tta = fs.Bool("tta", false, "flip test-time augmentation for every model")
		noField = fs.Bool("no-lung-field", false, "preprocess: send no lung field, so that no prediction outside the lungs is removed (to measure what the field changes)")
		trainCopies = fs.Int("train-copies", 0, "preprocess: also publish this many augmented copies per slice on lung.train.<model>")
		batchMax = fs.Int("batch-max", 0, "segment: group up to this many concurrent slices into one model call (dynamic batching; 0 or 1: off)")
		batchWait = fs.Duration("batch-wait", 10*time.Millisecond, "segment: how long a batch waits for more slices")
		hook = fs.String("webhook", "", "POST each alert as JSON to this URL (a webhook named \"default\")")
		alertAt = fs.String("alert-at", "", "lowest Lung-RADS category that raises an alert (default LR4A)")
		quiet = fs.Duration("quiet-period", 0, "a series is complete after this long without a new slice (default 60s)")
	}
	return func() (*Config, error) {
		c := defaultConfig()
		if *cfgPath != "" {
			b, err := os.ReadFile(*cfgPath)
			if err != nil {
				return nil, err
			}
			dec := json.NewDecoder(strings.NewReader(string(b)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				return nil, fmt.Errorf("config %s: %w", *cfgPath, err)
			}
		}
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "nats":
				c.NATS = *nats
			case "data-dir":
				c.DataDir = *dataDir
			case "listen":
				c.Listen = *listen
			case "models-dir":
				c.ModelsDir = *modelsDir
			case "provider":
				c.Provider = *provider
			case "threads":
				c.Threads = *threads
			case "tta":
				c.TTA = *tta
			case "no-lung-field":
				c.NoLungField = *noField
			case "train-copies":
				c.TrainCopies = *trainCopies
			case "log-level":
				c.LogLevel = *logLevel
			case "batch-max":
				c.BatchMax = *batchMax
			case "batch-wait":
				c.BatchWait = Duration(*batchWait)
			case "webhook":
				c.Webhooks = append(c.Webhooks, WebhookConfig{Name: "default", URL: *hook})
			case "alert-at":
				c.Findings.AlertAt = *alertAt
			case "quiet-period":
				c.Findings.QuietPeriod = Duration(*quiet)
			case "nats-credentials":
				c.NATSCredentials = *natsCreds
			case "no-nats-auth":
				c.NoNATSAuth = *noNATSAuth
			case "input-root":
				c.InputRoots = append(c.InputRoots, inputRoots...)
			}
		})
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("invalid configuration: %w", err)
		}
		if has(flagsModels) && !*check {
			// before any work: a missing registry is named with the
			// places tried, not met halfway through a demo (a config
			// check reads the configuration only: deploy/ checks its
			// command lines with the container's paths)
			dir, err := model.FindRegistry(c.ModelsDir, model.Where{})
			if err != nil {
				return nil, err
			}
			c.ModelsDir = dir
		}
		if *check {
			fmt.Println("configuration ok")
			os.Exit(0)
		}
		return &c, nil
	}
}

// newLogger builds the process logger: readable on a terminal, JSON lines
// otherwise.
func newLogger(level string, w io.Writer) zerolog.Logger {
	lv, err := zerolog.ParseLevel(level)
	if err != nil {
		lv = zerolog.InfoLevel
	}
	if progress.IsTerminal(w) {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05"}
	}
	return zerolog.New(w).Level(lv).With().Timestamp().Logger()
}

// stderr is the process's standard error shared by the replay's progress
// bar and the log: a log line is written above the bar, never into it.
var stderr = progress.NewTerm(os.Stderr)
