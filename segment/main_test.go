package segment_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/rs/zerolog"
)

func TestMain(m *testing.M) {
	if err := ortlib.Init(context.Background(), zerolog.Nop()); err != nil {
		fmt.Fprintln(os.Stderr, "loading ONNX Runtime:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
