package bus

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestTakesMatchesFilters: a consumer takes a subject its filter matches,
// with "*" one token and ">" one or more at the end, whether the filter is
// FilterSubject or one of FilterSubjects; one without a filter takes all.
func TestTakesMatchesFilters(t *testing.T) {
	for _, c := range []struct {
		filter, subject string
		want            bool
	}{
		{"lung.ready.a", "lung.ready.a", true},
		{"lung.ready.a", "lung.ready.ab", false},
		{"lung.ready.*", "lung.ready.a", true},
		{"lung.ready.*", "lung.ready.a.b", false},
		{"lung.ready.>", "lung.ready.a.b", true},
		{"lung.ready.>", "lung.ready", false},
		{"lung.*.a", "lung.masks.a", true},
		{"lung.*.a", "lung.masks.b", false},
		{">", "lung.slices.raw", true},
		{"lung.slices.raw", "lung.slices", false},
	} {
		for _, cfg := range []jetstream.ConsumerConfig{{FilterSubject: c.filter}, {FilterSubjects: []string{"other.x", c.filter}}} {
			if got := takes(cfg, c.subject); got != c.want {
				t.Errorf("takes(filters %q %v, %q) = %v, want %v", cfg.FilterSubject, cfg.FilterSubjects, c.subject, got, c.want)
			}
		}
	}
	if !takes(jetstream.ConsumerConfig{}, "lung.ready.a") {
		t.Errorf("a consumer without a filter does not take lung.ready.a")
	}
}
