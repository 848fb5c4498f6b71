// Command gen writes the files of deploy/ that are derived from code: the
// JetStream stream and consumer definitions and the nats-server
// authorization block. Run it from the repository root: go run ./deploy/gen
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/lungseg/lungseg/deploy"
)

func main() {
	dir := flag.String("dir", "deploy", "the deploy folder")
	flag.Parse()
	if err := deploy.Write(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
