package findings

import (
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// Subjects and streams of findings and alerts. (Proposed for pkg/bus; kept
// here until they move.)
const (
	// PrefixFindings + <category>.<model>.<replay>: Finding;
	// PrefixFindings + "slice.<model>.<replay>": SliceFindings.
	PrefixFindings = bus.PrefixFindings
	// PrefixAlerts + <category>.<model>.<replay>: Alert.
	PrefixAlerts = bus.PrefixAlerts
	// SliceToken is the subject token of per-slice findings.
	SliceToken = "slice"
	// FlushedToken is the subject token of FindingsFlushed, the answer
	// to a replay's flush request (PrefixFindings + "flushed.<replay>").
	FlushedToken = "flushed"

	StreamFindings = bus.StreamFindings
	StreamAlerts   = bus.StreamAlerts

	// StageName names the findings stage (errors subject, dedupe ids).
	StageName = "findings"
)

// AlertsMinAge is the least time alerts are kept, so that a webhook
// receiver may be down over a weekend without losing one.
const AlertsMinAge = bus.AlertsMinAge

func orLive(r string) string {
	if r == "" {
		return bus.LiveReplay
	}
	return r
}

// SliceSubject is where the per-slice components of one model are
// published.
func SliceSubject(model, replay string) string {
	return PrefixFindings + SliceToken + "." + model + "." + orLive(replay)
}

// FindingSubject is where nodule findings of a category are published.
func FindingSubject(category, model, replay string) string {
	return PrefixFindings + category + "." + model + "." + orLive(replay)
}

// AlertSubject is where alerts of a category are published.
func AlertSubject(category, model, replay string) string {
	return PrefixAlerts + category + "." + model + "." + orLive(replay)
}

// Streams returns the FINDINGS and ALERTS stream configurations (defined
// with the others in pkg/bus; alerts are kept at least AlertsMinAge).
func Streams(o bus.StreamOptions) []jetstream.StreamConfig {
	var out []jetstream.StreamConfig
	for _, c := range bus.Streams(o) {
		if c.Name == StreamFindings || c.Name == StreamAlerts {
			out = append(out, c)
		}
	}
	return out
}

// FlushSubject is where a replay asks the findings stage to complete its
// open series now (core NATS; the stage listens in queue group
// StageName, so one process answers).
func FlushSubject(replay string) string { return bus.PrefixFindingsFlush + orLive(replay) }

// FlushedSubject is where the stage says a replay's flush is done, after
// the findings it made (FindingsFlushed, in the FINDINGS stream).
func FlushedSubject(replay string) string {
	return PrefixFindings + FlushedToken + "." + orLive(replay)
}
