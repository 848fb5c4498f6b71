package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

// TestHelpEverywhere: -h works on every command, and on the subcommands
// of streams and dlq, without doing any work.
func TestHelpEverywhere(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	for _, c := range commands {
		for _, args := range [][]string{{"-h"}, {"print", "-h"}, {"list", "-h"}} {
			if len(args) > 1 && c.name != "streams" && c.name != "dlq" {
				continue
			}
			if c.name == "streams" && args[0] == "list" || c.name == "dlq" && args[0] == "print" {
				continue
			}
			// flag's usage goes to stderr: keep the test output short
			old := os.Stderr
			os.Stderr = devnull
			err := c.run(ctx, args)
			os.Stderr = old
			if !errors.Is(err, flag.ErrHelp) {
				t.Errorf("lungseg %s %v: %v, want the help", c.name, args, err)
			}
		}
	}
}

// TestHelpListsOnlyWhatApplies: the tools do not offer the pipeline's
// flags, and replay does not offer the embedded server's listener.
func TestHelpListsOnlyWhatApplies(t *testing.T) {
	for _, c := range []struct {
		groups []flagGroup
		want   []string
		not    []string
	}{
		{[]flagGroup{0}, []string{"nats", "config", "log-level"}, []string{"models-dir", "provider", "listen", "data-dir", "webhook"}},
		{[]flagGroup{flagsModels}, []string{"nats", "models-dir"}, []string{"provider", "listen", "data-dir"}},
		{[]flagGroup{flagsModels, flagsStore, flagsPipeline}, []string{"data-dir", "provider", "models-dir"}, []string{"listen", "no-nats-auth", "input-root"}},
		{nil, []string{"listen", "data-dir", "provider", "models-dir", "input-root", "no-nats-auth"}, nil},
	} {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		commonFlags(fs, c.groups...)
		for _, n := range c.want {
			if fs.Lookup(n) == nil {
				t.Errorf("groups %v: no --%s", c.groups, n)
			}
		}
		for _, n := range c.not {
			if fs.Lookup(n) != nil {
				t.Errorf("groups %v: offers --%s", c.groups, n)
			}
		}
	}
}

// TestSiblingMasks: replay finds the ground truth that phantom --format
// dicom writes (masks/ inside the folder), or a masks/ beside an input.
func TestSiblingMasks(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) string {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inside := mk(filepath.Join(root, "a", "dicom"))
	mk(filepath.Join(inside, "masks"))
	beside := mk(filepath.Join(root, "b", "series"))
	mk(filepath.Join(root, "b", "masks"))
	none := mk(filepath.Join(root, "c", "series"))
	for _, c := range []struct {
		in   []string
		want string
	}{
		{[]string{inside}, filepath.Join(inside, "masks")},
		{[]string{none, beside}, filepath.Join(root, "b", "masks")},
		{[]string{none}, ""},
	} {
		if got := siblingMasks(c.in); got != c.want {
			t.Errorf("siblingMasks(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}
