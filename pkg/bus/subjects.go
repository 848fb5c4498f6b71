// Package bus defines the pipeline's subjects and streams in one place and
// connects to NATS: an embedded nats-server with JetStream on a file store,
// or an external server or cluster given by URL.
package bus

import (
	"fmt"
	"regexp"
	"strings"
)

// Subjects. A "<replay>" token is the replay id (LiveReplay for slices that
// arrive outside a replay); "<model>" is a registry model name.
const (
	SubjIngestJobs = "lung.ingest.jobs"    // IngestJob
	SubjRaw        = "lung.slices.raw"     // Slice
	PrefixReady    = "lung.ready."         // + <model>: ModelInput
	PrefixMasks    = "lung.masks."         // + <model>: ModelOutput
	PrefixTrain    = "lung.train."         // + <model>: TrainingExample
	PrefixScores   = "lung.scores."        // + <model>.<replay>: Score
	PrefixErrors   = "lung.errors."        // + <stage>.<replay>: ErrorEvent
	PrefixIngested = "lung.events.ingest." // + <replay>: IngestDone
	PrefixFindings = "lung.findings."      // + <category>.<model>.<replay>: Finding; + slice.<model>.<replay>: SliceFindings
	PrefixAlerts   = "lung.alerts."        // + <category>.<model>.<replay>: Alert
	// PrefixFindingsFlush + <replay>: a replay asks the findings stage to
	// complete its open series now (core NATS, in no stream; empty body).
	// The stage answers with FindingsFlushed on PrefixFindings +
	// "flushed.<replay>", after the findings.
	PrefixFindingsFlush = "lung.control.findings.flush."
	LiveReplay          = "live"
)

// Headers every pipeline message carries, so that the runner can report a
// failure without decoding the payload.
const (
	HdrSlice  = "Lung-Slice"
	HdrReplay = "Lung-Replay"
	HdrModel  = "Lung-Model"
)

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidToken reports whether s can be used as one subject token (a model
// name, replay id or stage name).
func ValidToken(s string) bool { return tokenRE.MatchString(s) }

// CheckToken returns an error naming what is wrong with a subject token.
func CheckToken(kind, s string) error {
	if !ValidToken(s) {
		return fmt.Errorf("bus: %s %q must be 1-64 characters of letters, digits, '-' or '_'", kind, s)
	}
	return nil
}

// ReadySubject is where preprocess publishes input for one model.
func ReadySubject(model string) string { return PrefixReady + model }

// TrainSubject is where preprocess publishes augmented training copies.
func TrainSubject(model string) string { return PrefixTrain + model }

// MasksSubject is where segment publishes one model's output.
func MasksSubject(model string) string { return PrefixMasks + model }

// ScoresSubject is where score publishes one model's scores of a replay.
func ScoresSubject(model, replay string) string {
	return PrefixScores + model + "." + orLive(replay)
}

// ErrorsSubject is where a stage reports failures for a replay.
func ErrorsSubject(stage, replay string) string {
	return PrefixErrors + stage + "." + orLive(replay)
}

// IngestedSubject is where ingest reports finished jobs of a replay.
func IngestedSubject(replay string) string { return PrefixIngested + orLive(replay) }

func orLive(r string) string {
	if r == "" {
		return LiveReplay
	}
	return r
}

// MsgID builds the Nats-Msg-Id used for publish dedupe: the same slice,
// stage and model in the same replay is published once.
func MsgID(replay, slice, stage, model string) string {
	return strings.Join([]string{orLive(replay), slice, stage, model}, "|")
}
