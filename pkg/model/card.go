// Package model reads the model registry: one folder per model holding
// model.onnx and card.json. The card is the only place that says how a
// model wants its input and how its output is read, so preprocess, segment
// and score all take those settings from here.
package model

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Sentinel errors of the registry.
var (
	ErrUnknownModel = errors.New("model: unknown model")
	ErrBadCard      = errors.New("model: bad card")
	ErrChecksum     = errors.New("model: sha256 mismatch")
)

// CardFile and ModelFile are the names inside each model folder.
const (
	CardFile  = "card.json"
	ModelFile = "model.onnx"
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// Shape is a model's input size.
type Shape struct {
	Channels int `json:"channels"`
	Height   int `json:"height"`
	Width    int `json:"width"`
}

// Normalisation says how HU become model input. Kind "window" maps the HU
// window [Center-Width/2, Center+Width/2] linearly onto [0,1] and clamps.
type Normalisation struct {
	Kind   string  `json:"kind"`
	Center float64 `json:"center"`
	Width  float64 `json:"width"`
}

// Apply maps one HU value to model input.
func (n Normalisation) Apply(hu float64) float32 {
	lo := n.Center - n.Width/2
	v := (hu - lo) / n.Width
	if v < 0 {
		v = 0
	} else if v > 1 {
		v = 1
	}
	return float32(v)
}

// Card describes one model. Fields beyond the ones the pipeline reads
// (training, validation) are kept as written so that `lungseg models` can
// show them.
type Card struct {
	Name          string        `json:"name"`
	Architecture  string        `json:"architecture"`
	Variant       string        `json:"variant,omitempty"`
	Version       string        `json:"version"`
	Description   string        `json:"description,omitempty"`
	Input         Shape         `json:"input"`
	Normalisation Normalisation `json:"normalisation"`
	// Threshold on the probability that makes the binary mask.
	Threshold float64 `json:"threshold"`
	// Output is "logits" (sigmoid applied by segment) or "probabilities".
	Output     string `json:"output"`
	InputName  string `json:"input_name,omitempty"`
	OutputName string `json:"output_name,omitempty"`
	// TTA asks segment for flip test-time augmentation by default.
	TTA        bool            `json:"tta,omitempty"`
	SHA256     string          `json:"sha256"`
	Parameters int64           `json:"parameters,omitempty"`
	Training   json.RawMessage `json:"training,omitempty"`
	Validation json.RawMessage `json:"validation,omitempty"`

	// Dir is the model's folder; not part of the card file.
	Dir string `json:"-"`
}

// Path returns the model file's path.
func (c *Card) Path() string { return filepath.Join(c.Dir, ModelFile) }

// Validate checks the fields the pipeline depends on.
func (c *Card) Validate() error {
	var errs []string
	if !nameRE.MatchString(c.Name) {
		errs = append(errs, fmt.Sprintf("name %q must match %s", c.Name, nameRE))
	}
	if c.Input.Channels != 1 {
		errs = append(errs, fmt.Sprintf("input.channels = %d, only 1 is supported", c.Input.Channels))
	}
	if c.Input.Height < 8 || c.Input.Width < 8 || c.Input.Height > 2048 || c.Input.Width > 2048 {
		errs = append(errs, fmt.Sprintf("input size %d×%d out of range", c.Input.Height, c.Input.Width))
	}
	if c.Normalisation.Kind != "window" {
		errs = append(errs, fmt.Sprintf("normalisation.kind %q unknown (want \"window\")", c.Normalisation.Kind))
	}
	if c.Normalisation.Width <= 0 {
		errs = append(errs, "normalisation.width must be positive")
	}
	if c.Threshold <= 0 || c.Threshold >= 1 {
		errs = append(errs, fmt.Sprintf("threshold %v must be in (0,1)", c.Threshold))
	}
	if c.Output != "logits" && c.Output != "probabilities" {
		errs = append(errs, fmt.Sprintf("output %q must be \"logits\" or \"probabilities\"", c.Output))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w %s: %s", ErrBadCard, c.Name, strings.Join(errs, "; "))
	}
	return nil
}

// VerifyChecksum compares the model file's sha256 with the card's.
func (c *Card) VerifyChecksum() error {
	f, err := os.Open(c.Path())
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if !strings.EqualFold(got, c.SHA256) {
		return fmt.Errorf("%w: %s: file %s, card %s", ErrChecksum, c.Name, got, c.SHA256)
	}
	return nil
}

// LoadCard reads dir/card.json and validates it.
func LoadCard(dir string) (*Card, error) {
	b, err := os.ReadFile(filepath.Join(dir, CardFile))
	if err != nil {
		return nil, err
	}
	var c Card
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrBadCard, dir, err)
	}
	c.Dir = dir
	if c.InputName == "" {
		c.InputName = "input"
	}
	if c.OutputName == "" {
		c.OutputName = "logits"
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Registry is the set of models in one folder. It is read once and safe
// for concurrent use.
type Registry struct {
	Dir   string
	cards map[string]*Card
}

// OpenRegistry reads every <dir>/<name>/card.json. Folders without a card
// are ignored; a bad card is an error.
func OpenRegistry(dir string) (*Registry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("model: reading registry: %w", err)
	}
	r := &Registry{Dir: dir, cards: map[string]*Card{}}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		sub := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(sub, CardFile)); err != nil {
			continue
		}
		c, err := LoadCard(sub)
		if err != nil {
			return nil, err
		}
		if c.Name != e.Name() {
			return nil, fmt.Errorf("%w: folder %s holds card named %q", ErrBadCard, e.Name(), c.Name)
		}
		r.cards[c.Name] = c
	}
	return r, nil
}

// Names returns the model names, sorted.
func (r *Registry) Names() []string {
	n := make([]string, 0, len(r.cards))
	for k := range r.cards {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Get returns the card of one model.
func (r *Registry) Get(name string) (*Card, error) {
	c, ok := r.cards[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (registry %s has %s)", ErrUnknownModel, name, r.Dir, strings.Join(r.Names(), ", "))
	}
	return c, nil
}

// TTASuffix names the test-time-augmented variant of a model: "m+tta" runs
// model m with flip TTA and is scored as a model of its own, so a replay can
// compare the two.
const TTASuffix = "+tta"

// SplitVariant returns the registry model behind a selection name and
// whether it asks for TTA.
func SplitVariant(name string) (base string, tta bool) {
	if b, ok := strings.CutSuffix(name, TTASuffix); ok {
		return b, true
	}
	return name, false
}

// Resolve expands a model selection: "all" means every model, "all+tta"
// every model's TTA variant; names are checked; duplicates are dropped;
// the order is kept.
func (r *Registry) Resolve(names []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, n := range names {
		for _, part := range strings.Split(n, ",") {
			part = strings.TrimSpace(part)
			switch {
			case part == "":
			case part == "all" || part == "all"+TTASuffix:
				_, tta := SplitVariant(part)
				for _, m := range r.Names() {
					if tta {
						m += TTASuffix
					}
					add(m)
				}
			default:
				base, _ := SplitVariant(part)
				if _, err := r.Get(base); err != nil {
					return nil, err
				}
				add(part)
			}
		}
	}
	return out, nil
}
