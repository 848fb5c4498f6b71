package findings

import (
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// Subjects and streams of findings and alerts. (Proposed for pkg/bus; kept
// here until they move.)
const (
	// PrefixFindings + <category>.<model>.<replay>: Finding;
	// PrefixFindings + "slice.<model>.<replay>": SliceFindings.
	PrefixFindings = "lung.findings."
	// PrefixAlerts + <category>.<model>.<replay>: Alert.
	PrefixAlerts = "lung.alerts."
	// SliceToken is the subject token of per-slice findings.
	SliceToken = "slice"

	StreamFindings = "FINDINGS"
	StreamAlerts   = "ALERTS"

	// StageName names the findings stage (errors subject, dedupe ids).
	StageName = "findings"
)

// AlertsMinAge is the least time alerts are kept, so that a webhook
// receiver may be down over a weekend without losing one.
const AlertsMinAge = 7 * 24 * time.Hour

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

// Streams returns the FINDINGS and ALERTS stream configurations, in the
// style of bus.Streams (file storage, limits retention). Alerts are kept
// at least AlertsMinAge.
func Streams(o bus.StreamOptions) []jetstream.StreamConfig {
	d := bus.DefaultStreamOptions
	if o.Replicas == 0 {
		o.Replicas = d.Replicas
	}
	if o.MaxAge == 0 {
		o.MaxAge = d.MaxAge
	}
	if o.Duplicates == 0 {
		o.Duplicates = d.Duplicates
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = d.MaxBytes
	}
	mk := func(name, desc string, age time.Duration, subjects ...string) jetstream.StreamConfig {
		return jetstream.StreamConfig{
			Name: name, Description: desc, Subjects: subjects,
			Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy,
			Replicas: o.Replicas, MaxAge: age, MaxBytes: o.MaxBytes, Duplicates: o.Duplicates,
			MaxMsgSize: bus.MaxPayload, Discard: jetstream.DiscardOld,
		}
	}
	return []jetstream.StreamConfig{
		mk(StreamFindings, "nodule findings per category and per-slice components", o.MaxAge, PrefixFindings+">"),
		mk(StreamAlerts, "alerts: findings at or above the alert category", max(o.MaxAge, AlertsMinAge), PrefixAlerts+">"),
	}
}
