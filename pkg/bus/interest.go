package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNoConsumer is returned for a message bound for a work stream
// (WorkStreams) that no consumer of the stream would take: with interest
// retention the stream drops such a message at once, though it
// acknowledges the publish. It happens while the stage downstream has not
// yet created its consumer (a stage process starting after its producer, a
// consumer still being placed on a cluster), or when a slice asks for a
// model no segment serves. The publisher keeps the message and retries.
var ErrNoConsumer = errors.New("no consumer takes the subject")

// WorkStreamOf returns the work stream that stores subject, or "" when
// none does.
func WorkStreamOf(subject string) string {
	switch {
	case subject == SubjRaw:
		return StreamRaw
	case strings.HasPrefix(subject, PrefixReady):
		return StreamReady
	case strings.HasPrefix(subject, PrefixMasks):
		return StreamMasks
	}
	return ""
}

// InterestTTL is how long Interest trusts that a subject it found taken
// still is: consumers are durable and removed only by an operator.
const InterestTTL = 30 * time.Second

// Interest checks, before a publish to a work stream, that a consumer of
// the stream takes the subject. What it found taken it remembers for
// InterestTTL; what it found untaken it asks again the next time. Safe for
// concurrent use.
type Interest struct {
	mu    sync.Mutex
	taken map[interestKey]time.Time // when a consumer was seen taking it
}

// interest is the process's Interest, shared by every publisher.
var interest Interest

// CheckInterest is Check on an Interest shared by the whole process.
func CheckInterest(ctx context.Context, js jetstream.JetStream, subject string) error {
	return interest.Check(ctx, js, subject)
}

type interestKey struct {
	js      jetstream.JetStream
	subject string
}

// Check returns nil when subject is not on a work stream or a consumer of
// its stream takes it, an error wrapping ErrNoConsumer when none does, and
// another error when the consumers cannot be listed.
func (i *Interest) Check(ctx context.Context, js jetstream.JetStream, subject string) error {
	name := WorkStreamOf(subject)
	if name == "" {
		return nil
	}
	key := interestKey{js, subject}
	i.mu.Lock()
	seen, ok := i.taken[key]
	i.mu.Unlock()
	if ok && time.Since(seen) < InterestTTL {
		return nil
	}
	st, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("bus: consumers of %s: %w", name, err)
	}
	l := st.ListConsumers(ctx)
	found := false
	for ci := range l.Info() {
		if takes(ci.Config, subject) {
			found = true
		}
	}
	if err := l.Err(); err != nil && !found {
		return fmt.Errorf("bus: consumers of %s: %w", name, err)
	}
	if !found {
		return fmt.Errorf("bus: %s on stream %s: %w (its stage is not running yet, or nothing serves it)", subject, name, ErrNoConsumer)
	}
	i.mu.Lock()
	if i.taken == nil {
		i.taken = make(map[interestKey]time.Time)
	}
	i.taken[key] = time.Now()
	i.mu.Unlock()
	return nil
}

// takes reports whether a consumer with config c receives subject (a
// consumer without a filter receives every subject of its stream).
func takes(c jetstream.ConsumerConfig, subject string) bool {
	filters := c.FilterSubjects
	if c.FilterSubject != "" {
		filters = append(slices.Clip(filters), c.FilterSubject)
	}
	if len(filters) == 0 {
		return true
	}
	for _, f := range filters {
		if server.SubjectMatchesFilter(subject, f) {
			return true
		}
	}
	return false
}
