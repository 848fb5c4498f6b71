package model

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mkRegistry(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "m"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "m", CardFile), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestFindRegistry(t *testing.T) {
	root := t.TempDir()
	repo := filepath.Join(root, "repo")
	mkRegistry(t, filepath.Join(repo, "models"))
	deep := filepath.Join(repo, "cmd", "lungseg")
	elsewhere := filepath.Join(root, "elsewhere")
	release := filepath.Join(root, "release")
	mkRegistry(t, filepath.Join(release, "models"))
	envReg := filepath.Join(root, "env-models")
	mkRegistry(t, envReg)
	for _, d := range []string{deep, elsewhere, filepath.Join(release, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	where := func(env, wd, exe string) Where {
		return Where{
			Getenv:     func(string) string { return env },
			Getwd:      func() (string, error) { return wd, nil },
			Executable: func() (string, error) { return exe, nil },
		}
	}
	noExe := filepath.Join(root, "opt", "bin", "lungseg")
	for _, c := range []struct {
		name, given, env, wd, exe, want string
	}{
		{"given", envReg, "", elsewhere, noExe, envReg},
		{"env", "", envReg, repo, noExe, envReg},
		{"repo root", "", "", repo, noExe, filepath.Join(repo, "models")},
		{"repo sub-folder", "", "", deep, noExe, filepath.Join(repo, "models")},
		{"beside bin/", "", "", elsewhere, filepath.Join(release, "bin", "lungseg"), filepath.Join(release, "models")},
	} {
		got, err := FindRegistry(c.given, where(c.env, c.wd, c.exe))
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	// nothing anywhere: the error names the places tried
	_, err := FindRegistry("", where(filepath.Join(root, "nope"), elsewhere, noExe))
	if !errors.Is(err, ErrNoRegistry) {
		t.Fatalf("err %v", err)
	}
	for _, s := range []string{filepath.Join(root, "nope") + " ($LUNGSEG_MODELS)", filepath.Join(elsewhere, "models") + " (working directory)",
		"beside the executable", "--models-dir"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	// a given folder that does not exist is an error, not a search
	if _, err := FindRegistry(filepath.Join(root, "typo"), where(envReg, repo, noExe)); !errors.Is(err, ErrNoRegistry) || !strings.Contains(err.Error(), "typo") {
		t.Errorf("given typo: %v", err)
	}
}
