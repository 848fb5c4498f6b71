// Package natsauth holds the NATS security settings of the pipeline: the
// client side (user/password, nkey seed or credentials file, TLS) as
// nats.go options, and the server side: one NATS user per role (each
// stage, the replay client, the dead-letter tool, the administrator) with
// publish and subscribe allow-lists so that a stage can only publish and
// subscribe where it must. Deny is the default: a subject not listed is
// refused by the server.
package natsauth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Sentinel errors.
var (
	// ErrConflictingAuth means more than one way to authenticate was set.
	ErrConflictingAuth = errors.New("natsauth: set only one of password, nkey seed file or credentials file")
	// ErrUnknownRole means a role name is not one of Roles.
	ErrUnknownRole = errors.New("natsauth: unknown role")
	// ErrTLSPair means only one of the client certificate and key was set.
	ErrTLSPair = errors.New("natsauth: client certificate and key go together")
)

// Options are a client's NATS credentials and TLS settings. The zero value
// connects without authentication or TLS.
type Options struct {
	// User and Password authenticate with a user name and password.
	// PasswordFile reads the password from a file (a mounted secret);
	// PasswordEnv from an environment variable.
	User         string `json:"user,omitempty"`
	Password     string `json:"password,omitempty"`
	PasswordFile string `json:"password_file,omitempty"`
	PasswordEnv  string `json:"password_env,omitempty"`
	// NKeySeedFile authenticates with an nkey (the seed file of a user
	// nkey whose public key the server lists).
	NKeySeedFile string `json:"nkey_seed_file,omitempty"`
	// CredsFile authenticates with a decentralised JWT credentials file.
	CredsFile string `json:"creds_file,omitempty"`
	// TLSCA is a PEM file of the CAs that sign the server certificate;
	// setting it requires TLS. TLSCert and TLSKey are the client
	// certificate for servers that verify clients.
	TLSCA   string `json:"tls_ca,omitempty"`
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
}

// Validate checks that the options are consistent (without reading files).
func (o Options) Validate() error {
	n := 0
	if o.User != "" || o.Password != "" || o.PasswordFile != "" || o.PasswordEnv != "" {
		n++
	}
	if o.NKeySeedFile != "" {
		n++
	}
	if o.CredsFile != "" {
		n++
	}
	if n > 1 {
		return ErrConflictingAuth
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return ErrTLSPair
	}
	return nil
}

// HasAuth reports whether the options name a way to authenticate (a
// user, an nkey seed, a credentials file or a TLS client certificate).
func (o Options) HasAuth() bool {
	return o.User != "" || o.Password != "" || o.PasswordFile != "" || o.PasswordEnv != "" ||
		o.NKeySeedFile != "" || o.CredsFile != "" || o.TLSCert != ""
}

// password resolves the password from the options, file or environment.
func (o Options) password() (string, error) {
	switch {
	case o.Password != "":
		return o.Password, nil
	case o.PasswordFile != "":
		b, err := os.ReadFile(o.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("natsauth: reading password file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case o.PasswordEnv != "":
		v, ok := os.LookupEnv(o.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("natsauth: environment variable %s is not set", o.PasswordEnv)
		}
		return v, nil
	}
	return "", nil
}

// NATSOptions turns the settings into nats.go connection options.
func (o Options) NATSOptions() ([]nats.Option, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	switch {
	case o.NKeySeedFile != "":
		opt, err := nats.NkeyOptionFromSeed(o.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("natsauth: reading nkey seed: %w", err)
		}
		opts = append(opts, opt)
	case o.CredsFile != "":
		if _, err := os.Stat(o.CredsFile); err != nil {
			return nil, fmt.Errorf("natsauth: credentials file: %w", err)
		}
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	case o.User != "":
		pw, err := o.password()
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserInfo(o.User, pw))
	}
	if o.TLSCA != "" || o.TLSCert != "" {
		cfg, err := o.TLSConfig()
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(cfg))
	}
	return opts, nil
}

// TLSConfig builds the client TLS configuration (TLS 1.2 or later).
func (o Options) TLSConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.TLSCA != "" {
		pem, err := os.ReadFile(o.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("natsauth: reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("natsauth: no certificate in CA file %s", o.TLSCA)
		}
		cfg.RootCAs = pool
	}
	if o.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("natsauth: loading client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Roles, one NATS user each.
const (
	RoleIngest     = "ingest"
	RolePreprocess = "preprocess"
	RoleSegment    = "segment"
	RoleRefine     = "refine"
	RoleScore      = "score"
	RoleFindings   = "findings"
	RoleWebhook    = "webhook"
	RoleReceive    = "receive"
	RoleReplay     = "replay"
	RoleDLQ        = "dlq"
	RoleAdmin      = "admin"
)

// Roles lists every role in a stable order.
var Roles = []string{RoleIngest, RolePreprocess, RoleSegment, RoleRefine, RoleScore, RoleFindings, RoleWebhook, RoleReceive, RoleReplay, RoleDLQ, RoleAdmin}

// Inbox is the reply prefix every client subscribes to for JetStream API
// responses and publish acknowledgements.
const Inbox = "_INBOX.>"

// consume returns the subjects a client needs to run a durable pull
// consumer named durable ("*" for any) on stream: create/update and read
// it, pull from it and acknowledge its messages.
func consume(stream, durable string) []string {
	create := "$JS.API.CONSUMER.CREATE." + stream + "." + durable
	out := []string{
		create, create + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + stream + "." + durable,
		"$JS.API.CONSUMER.INFO." + stream + "." + durable,
		"$JS.API.CONSUMER.MSG.NEXT." + stream + "." + durable,
		"$JS.ACK." + stream + "." + durable + ".>",
		"$JS.API.STREAM.INFO." + stream,
		// Whether a consumed message has left a work stream, so that
		// its object in the pixel bucket can be released (pkg/stage).
		"$JS.API.STREAM.MSG.GET." + stream,
	}
	if durable == "*" {
		// A create subject ends in the consumer name or name.filter.
		out = []string{
			"$JS.API.CONSUMER.CREATE." + stream + ".>",
			"$JS.API.CONSUMER.DURABLE.CREATE." + stream + ".*",
			"$JS.API.CONSUMER.INFO." + stream + ".*",
			"$JS.API.CONSUMER.MSG.NEXT." + stream + ".*",
			"$JS.ACK." + stream + ".*.>",
			"$JS.API.STREAM.INFO." + stream,
			"$JS.API.STREAM.MSG.GET." + stream,
		}
	}
	return out
}

// ordered returns the subjects of ordered (ephemeral) consumers on a
// stream: the client creates, reads and deletes them itself.
func ordered(stream string) []string {
	return []string{
		"$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.INFO." + stream + ".*",
		"$JS.API.CONSUMER.DELETE." + stream + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".*",
		"$JS.API.STREAM.INFO." + stream,
	}
}

// objectStore returns the subjects a client needs to read objects of a
// JetStream Object Store bucket (open it, read an object's info and its
// chunks with an ordered consumer) and, with write, to put objects (the
// chunk and meta subjects, and the purge of an object's old chunks).
func objectStore(bucket string, write bool) []string {
	s := "OBJ_" + bucket
	out := []string{
		"$JS.API.STREAM.INFO." + s,
		"$JS.API.DIRECT.GET." + s + ".>",
		"$JS.API.CONSUMER.CREATE." + s + ".>",
		"$JS.API.CONSUMER.DELETE." + s + ".*",
		"$JS.FC." + s + ".>",
	}
	if write {
		out = append(out, "$O."+bucket+".>", "$JS.API.STREAM.PURGE."+s)
	}
	return out
}

// keyValue returns the subjects a client needs to open a key-value
// bucket, get, put and purge keys, and list or watch them.
func keyValue(bucket string) []string {
	s := "KV_" + bucket
	return []string{
		"$KV." + bucket + ".>",
		"$JS.API.STREAM.INFO." + s,
		"$JS.API.DIRECT.GET." + s + ".>",
		"$JS.API.CONSUMER.CREATE." + s + ".>",
		"$JS.API.CONSUMER.DELETE." + s + ".*",
		"$JS.FC." + s + ".>",
	}
}

// createStream returns the subjects that create or update one stream
// (a bucket a client makes itself when it is missing). nats.go also
// reads the account's JetStream information (AccountInfo) before making
// a bucket: grant it once.
func createStream(stream string) []string {
	return []string{"$JS.API.STREAM.CREATE." + stream, "$JS.API.STREAM.UPDATE." + stream}
}

// AccountInfo is the subject of the account's JetStream information,
// which nats.go reads before it creates a key-value or object bucket.
const AccountInfo = "$JS.API.INFO"

// The SEG collector's stage name, object store bucket and result
// subjects: score/seg's StageName, Bucket and PrefixResults, repeated so
// that this package stays free of the stages' dependencies
// (TestPipelinePermissions fails if they differ).
const (
	segStage  = "seg"
	segBucket = "lung-seg"
	segEvents = "lung.events.seg.>"
)

// FindingsBucket is the findings stage's key-value bucket (the default
// of findings.Config.StateBucket).
const FindingsBucket = "lungseg-findings"

// webhookPub returns the subjects of webhook sinks: a durable
// webhook-<name> on ALERTS and their error events. The error subject is
// lung.errors.webhook-<name>.<replay>; a NATS wildcard is a whole token,
// so without the sink names this allows every stage's error subject.
func webhookPub() []string {
	return append(consume(bus.StreamAlerts, "*"), bus.PrefixErrors+"*.>")
}

// interest lets a publisher to a work stream list its consumers, as
// stage.Publish does before each publish there (bus.Interest): a message
// no consumer takes would be dropped.
func interest(stream string) []string {
	return []string{"$JS.API.STREAM.INFO." + stream, "$JS.API.CONSUMER.LIST." + stream}
}

// errs is the error subject of a stage's failures.
func errs(stage string) string { return bus.PrefixErrors + stage + ".>" }

// Permissions returns a role's allow-lists. Every role may subscribe to
// its inbox and nothing else unless listed; admin may do everything.
func Permissions(role string) (*server.Permissions, error) {
	var pub, sub []string
	switch role {
	case RoleIngest:
		pub = append(consume(bus.StreamIngest, "ingest"), bus.SubjRaw, bus.PrefixIngested+">", errs("ingest"))
		pub = append(pub, objectStore(bus.PixelsBucket, true)...)
		// The backlog bound reads the work streams' state (bus.Backlog);
		// job progress is kept in its bucket.
		for _, st := range bus.WorkStreams {
			pub = append(pub, "$JS.API.STREAM.INFO."+st)
		}
		pub = append(pub, keyValue(bus.IngestProgressBucket)...)
		pub = append(pub, interest(bus.StreamRaw)...)
	case RolePreprocess:
		// Reads the pixels ingest stored; writes a cascade input's native
		// HU there when it does not fit the message (native/<replay>/<id>).
		pub = append(consume(bus.StreamRaw, "preprocess"), bus.PrefixReady+">", bus.PrefixTrain+">", errs("preprocess"))
		pub = append(pub, objectStore(bus.PixelsBucket, true)...)
		pub = append(pub, interest(bus.StreamReady)...)
	case RoleSegment:
		// One durable per model (segment-<model>): any consumer of READY.
		// Reads the native HU a cascade input references in the pixel
		// bucket, and every message over the payload limit (pkg/objref);
		// writes its own outputs over the limit there.
		pub = append(consume(bus.StreamReady, "*"), bus.PrefixMasks+">", errs("segment"))
		pub = append(pub, objectStore(bus.PixelsBucket, true)...)
		pub = append(pub, interest(bus.StreamMasks)...)
	case RoleRefine:
		// One durable per detector (refine-<detector>) on MASKS: a NATS
		// wildcard is a whole token, so any consumer of MASKS, as segment
		// has any of READY. Publishes the cascades' outputs on MASKS.
		// Reads the native HU a detector's output references in the
		// pixel bucket and every message over the payload limit; writes
		// its outputs over the limit there.
		pub = append(consume(bus.StreamMasks, "*"), bus.PrefixMasks+">", errs("refine"))
		pub = append(pub, objectStore(bus.PixelsBucket, true)...)
		pub = append(pub, interest(bus.StreamMasks)...)
	case RoleScore:
		// Outputs and scores over the payload limit go by the pixel
		// bucket (pkg/objref).
		pub = append(consume(bus.StreamMasks, "score"), bus.PrefixScores+">", errs("score"))
		pub = append(pub, objectStore(bus.PixelsBucket, true)...)
	case RoleFindings:
		// Scores (durable findings), the HU of raw slices (findings-hu),
		// the series state bucket; publishes findings and alerts. A
		// webhook run in the same process has the webhook role's rights.
		pub = append(consume(bus.StreamScores, "findings"), consume(bus.StreamRaw, "findings-hu")...)
		pub = append(pub, keyValue(FindingsBucket)...)
		pub = append(pub, bus.PrefixFindings+">", bus.PrefixAlerts+">", errs("findings"), errs("findings-hu"))
		// Large scores and slices, and series slices over the KV value
		// limit, are in the pixel bucket (pkg/objref).
		pub = append(pub, objectStore(bus.PixelsBucket, true)...)
		pub = append(pub, webhookPub()...)
		// A replay's request to complete its series now (the answer,
		// FindingsFlushed, goes to the FINDINGS stream).
		sub = []string{Inbox, bus.PrefixFindingsFlush + "*"}
	case RoleWebhook:
		// webhook.Run in a process of its own (pipeline.Run opens the
		// pixel bucket: run webhooks there with the findings role).
		pub = webhookPub()
	case RoleReceive:
		// The DICOM receivers publish raw slices (errors as ingest) and
		// keep each study's attributes in the studies bucket; the SEG
		// collector (durable seg on SCORES) stores SEG files in its
		// object store and announces them on lung.events.seg.>. Both
		// buckets are created by the receiver if missing.
		pub = append(consume(bus.StreamScores, segStage), bus.SubjRaw, errs("ingest"), errs(segStage), segEvents)
		pub = append(pub, keyValue(bus.StudiesBucket)...)
		pub = append(pub, createStream("KV_"+bus.StudiesBucket)...)
		pub = append(pub, objectStore(segBucket, true)...)
		pub = append(pub, createStream("OBJ_"+segBucket)...)
		// Frames over the payload limit and large scores go by the pixel
		// bucket (pkg/objref).
		pub = append(pub, objectStore(bus.PixelsBucket, true)...)
		// RAW keeps slices only for its consumers: the receivers read its
		// state to refuse an instance while no stage consumes it.
		pub = append(pub, interest(bus.StreamRaw)...)
		pub = append(pub, AccountInfo)
	case RoleReplay:
		// Jobs in; scores, errors, events and its findings out; asks the
		// findings stage to complete its series (bus.PrefixFindingsFlush).
		pub = []string{bus.SubjIngestJobs, bus.PrefixFindingsFlush + "*"}
		for _, s := range []string{bus.StreamScores, bus.StreamErrors, bus.StreamEvents, bus.StreamFindings} {
			pub = append(pub, ordered(s)...)
		}
		// Scores of large slices come by reference (pkg/objref).
		pub = append(pub, objectStore(bus.PixelsBucket, false)...)
	case RoleDLQ:
		// Captures advisories, reads the dead message from its stream,
		// writes the dead-letter stream and re-drives messages to the
		// pipeline's subjects.
		pub = []string{"lung.>", "$JS.API.STREAM.MSG.GET.*", "$JS.API.STREAM.MSG.DELETE.*", "$JS.API.STREAM.INFO.*",
			"$JS.API.CONSUMER.>", "$JS.ACK.>", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"}
	case RoleAdmin:
		pub, sub = []string{">"}, []string{">"}
	default:
		return nil, fmt.Errorf("%w %q (want one of %v)", ErrUnknownRole, role, Roles)
	}
	if sub == nil {
		sub = []string{Inbox}
	}
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: sub},
	}, nil
}

// Users returns the server's users, one per role, with the passwords
// given (a role without a password is left out).
func Users(passwords map[string]string) ([]*server.User, error) {
	var out []*server.User
	for _, role := range Roles {
		pw, ok := passwords[role]
		if !ok {
			continue
		}
		p, err := Permissions(role)
		if err != nil {
			return nil, err
		}
		out = append(out, &server.User{Username: role, Password: pw, Permissions: p})
	}
	for r := range passwords {
		if _, err := Permissions(r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// PasswordEnv is the environment variable the generated server
// configuration reads a role's password from, e.g.
// LUNGSEG_NATS_PASSWORD_PREPROCESS.
func PasswordEnv(role string) string {
	return "LUNGSEG_NATS_PASSWORD_" + strings.ToUpper(role)
}

// ServerConfig renders the authorization block of a nats-server
// configuration file for every role, reading each password from
// PasswordEnv(role) when the server starts.
func ServerConfig() string {
	var b strings.Builder
	b.WriteString("# Generated by `go run ./deploy/gen` from pkg/natsauth: do not edit.\n")
	b.WriteString("# One user per pipeline role; passwords come from the environment.\n")
	b.WriteString("authorization {\n  users = [\n")
	for _, role := range Roles {
		p, _ := Permissions(role)
		fmt.Fprintf(&b, "    {\n      user: %q\n      password: $%s\n      permissions: {\n", role, PasswordEnv(role))
		fmt.Fprintf(&b, "        publish: { allow: %s }\n", list(p.Publish.Allow))
		fmt.Fprintf(&b, "        subscribe: { allow: %s }\n", list(p.Subscribe.Allow))
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

func list(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Environment variables read by WithEnv, for containers whose secrets are
// mounted as files or passed in the environment.
const (
	EnvUser         = "LUNGSEG_NATS_USER"
	EnvPassword     = "LUNGSEG_NATS_PASSWORD"
	EnvPasswordFile = "LUNGSEG_NATS_PASSWORD_FILE"
	EnvNKeySeedFile = "LUNGSEG_NATS_NKEY_SEED_FILE"
	EnvCredsFile    = "LUNGSEG_NATS_CREDS"
	EnvTLSCA        = "LUNGSEG_NATS_TLS_CA"
	EnvTLSCert      = "LUNGSEG_NATS_TLS_CERT"
	EnvTLSKey       = "LUNGSEG_NATS_TLS_KEY"
)

// WithEnv fills the fields left empty from the LUNGSEG_NATS_* environment
// variables (the configuration file wins where both are set).
func (o Options) WithEnv() Options {
	set := func(f *string, env string) {
		if *f == "" {
			*f = os.Getenv(env)
		}
	}
	if o.Password == "" && o.PasswordFile == "" && o.PasswordEnv == "" {
		if _, ok := os.LookupEnv(EnvPassword); ok {
			o.PasswordEnv = EnvPassword
		}
		set(&o.PasswordFile, EnvPasswordFile)
	}
	set(&o.User, EnvUser)
	set(&o.NKeySeedFile, EnvNKeySeedFile)
	set(&o.CredsFile, EnvCredsFile)
	set(&o.TLSCA, EnvTLSCA)
	set(&o.TLSCert, EnvTLSCert)
	set(&o.TLSKey, EnvTLSKey)
	return o
}
