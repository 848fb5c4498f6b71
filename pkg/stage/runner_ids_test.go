package stage

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestLogIDsOnlyWhenSet: a slice without a model logs no empty "model".
func TestLogIDsOnlyWhenSet(t *testing.T) {
	var b bytes.Buffer
	l := withIDs(zerolog.New(&b).With(), "case/1", "", "r1").Logger()
	l.Info().Msg("x")
	out := b.String()
	if strings.Contains(out, `"model"`) || !strings.Contains(out, `"slice":"case/1"`) || !strings.Contains(out, `"replay":"r1"`) {
		t.Errorf("log line %s", out)
	}
}
