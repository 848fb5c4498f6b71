// Package model reads the model registry: one folder per model holding
// model.onnx and card.json. The card is the only place that says how a
// model wants its input and how its output is read, so preprocess, segment
// and score all take those settings from here.
package model

import (
	"bytes"
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

// Tasks a card may name.
const (
	TaskSlice = "slice"
	TaskCrop  = "crop"
)

// MaxCascadePixels caps Window²·MaxCandidates of a cascade: segment sends
// every crop window of a slice as float32 in one message of at most
// 1 MiB, beside the detector's map (8 windows of 128² are 512 KiB).
const MaxCascadePixels = 8 * 128 * 128

// Cascade configures the two-model cascade of a crop model: the detector's
// probability, resized to the slice's native grid, is cut into components
// at DetectThreshold; the MaxCandidates most probable ones are each
// segmented again by the crop model in a Window×Window native-resolution
// window centred on the component (see segment/cascade).
type Cascade struct {
	Window          int     `json:"window"`
	DetectThreshold float64 `json:"detect_threshold"`
	MaxCandidates   int     `json:"max_candidates"`
	// BoxMargin > 0: the crop model sees each candidate's bounding box
	// grown by this many pixels, air around it (segment/cascade, step 3);
	// 0 or absent: the whole window in its context.
	BoxMargin int `json:"box_margin,omitempty"`
}

// Verifier configures a crop model's component verifier: a small
// classifier, in its own ONNX file beside the model's, that takes a
// Patch×Patch window of native HU centred on one component of the crop
// model's thresholded map (channel 0, normalised by Normalisation) and
// the component itself (channel 1: 1 on its pixels, else 0), NCHW float32
// [N,2,Patch,Patch], and outputs one logit per component ([N,1]). segment
// keeps a component whose probability is at least Threshold and lowers
// the others below the crop model's threshold (segment/verify). It runs
// where the crop model is tiled over a slice larger than its window, not
// on a bare crop, which is one candidate already.
type Verifier struct {
	File          string        `json:"file"`
	SHA256        string        `json:"sha256"`
	Patch         int           `json:"patch"`
	Normalisation Normalisation `json:"normalisation"`
	Threshold     float64       `json:"threshold"`
	InputName     string        `json:"input_name,omitempty"`
	OutputName    string        `json:"output_name,omitempty"`
	// Zoom, when set, makes the window fit the component: its side is
	// Patch·f native pixels, f the least block side (at most MaxFactor)
	// whose window holds the component's box and Margin pixels on every
	// side, averaged over f×f blocks (segment/verify.ZoomPatch).
	Zoom *VerifierZoom `json:"zoom,omitempty"`
	// Training is kept as written, for people to read.
	Training json.RawMessage `json:"training,omitempty"`
}

// UnmarshalJSON decodes a verifier section and refuses a field it does not
// know: each field changes what the verifier is fed, so a card written for
// a newer pipeline (a zoomed window, say) must fail to load here rather
// than run the verifier on inputs it was not trained on.
func (v *Verifier) UnmarshalJSON(b []byte) error {
	type plain Verifier // without this method
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var p plain
	if err := d.Decode(&p); err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	*v = Verifier(p)
	return nil
}

// VerifierZoom is Verifier.Zoom.
type VerifierZoom struct {
	Margin    int `json:"margin"`
	MaxFactor int `json:"max_factor"`
}

// VerifierPath returns the verifier file's path ("" without a verifier).
func (c *Card) VerifierPath() string {
	if c.Verifier == nil {
		return ""
	}
	return filepath.Join(c.Dir, c.Verifier.File)
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
	TTA bool `json:"tta,omitempty"`
	// Task is "" or "slice" for a whole-slice model, "crop" for a crop
	// model, which segments a Cascade.Window² window at the slice's native
	// pixel grid: inside a cascade behind its Detector, or selected alone,
	// on a slice padded to the window (imgx.PadCentre) or, when the slice
	// is larger, in overlapping windows (segment).
	Task string `json:"task,omitempty"`
	// Detector is the whole-slice model a crop model pairs with (crop
	// models only); "<detector>+crop" selects the cascade.
	Detector string `json:"detector,omitempty"`
	// Cascade configures the cascade (crop models only).
	Cascade *Cascade `json:"cascade,omitempty"`
	// Verifier, when set, judges every component of the crop model's map
	// on a slice larger than its window (crop models only; see Verifier).
	Verifier   *Verifier       `json:"verifier,omitempty"`
	SHA256     string          `json:"sha256"`
	Parameters int64           `json:"parameters,omitempty"`
	Training   json.RawMessage `json:"training,omitempty"`
	Validation json.RawMessage `json:"validation,omitempty"`
	// Quantization is set on an int8 variant of a float model (made by
	// train/lungseg_train/quantize.py). Quantised models are selected by
	// name; "all" leaves them (and their cascades) out.
	Quantization *Quantization `json:"quantization,omitempty"`

	// Dir is the model's folder; not part of the card file.
	Dir string `json:"-"`
}

// Quantization says how a quantised model was made; fields beyond these
// are kept in the card file for people to read.
type Quantization struct {
	// Format is "QDQ" (ONNX QuantizeLinear/DequantizeLinear pairs).
	Format string `json:"format"`
	// From is the float model it was made from.
	From struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"from"`
	// ValBareFloat and ValBareInt8 are the two models' figures on the
	// validation bare crops (crop models), as the quantiser measured them.
	ValBareFloat *struct {
		Mean float64 `json:"mean"`
	} `json:"val_bare_float,omitempty"`
	ValBareInt8 *struct {
		Mean float64 `json:"mean"`
	} `json:"val_bare_int8,omitempty"`
}

// Quantized reports whether the card is a quantised variant.
func (c *Card) Quantized() bool { return c.Quantization != nil }

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
	errs = append(errs, c.validateTask()...)
	errs = append(errs, c.validateVerifier()...)
	if len(errs) > 0 {
		return fmt.Errorf("%w %s: %s", ErrBadCard, c.Name, strings.Join(errs, "; "))
	}
	return nil
}

// IsCrop reports whether the card is a crop model's.
func (c *Card) IsCrop() bool { return c.Task == TaskCrop }

// validateTask checks task, detector and cascade.
func (c *Card) validateTask() []string {
	var errs []string
	switch c.Task {
	case "", TaskSlice:
		if c.Detector != "" || c.Cascade != nil {
			errs = append(errs, fmt.Sprintf("detector and cascade are for task %q only", TaskCrop))
		}
		return errs
	case TaskCrop:
	default:
		return []string{fmt.Sprintf("task %q unknown (want \"slice\" or \"crop\")", c.Task)}
	}
	if !nameRE.MatchString(c.Detector) || c.Detector == c.Name {
		errs = append(errs, fmt.Sprintf("detector %q must name another model", c.Detector))
	}
	k := c.Cascade
	if k == nil {
		return append(errs, "a crop model needs cascade {window, detect_threshold, max_candidates}")
	}
	if k.Window <= 16 || k.Window > 512 {
		errs = append(errs, fmt.Sprintf("cascade.window %d out of range (17..512)", k.Window))
	}
	if k.Window != c.Input.Height || k.Window != c.Input.Width {
		errs = append(errs, fmt.Sprintf("cascade.window %d differs from input %d×%d", k.Window, c.Input.Height, c.Input.Width))
	}
	if k.DetectThreshold <= 0 || k.DetectThreshold >= 1 {
		errs = append(errs, fmt.Sprintf("cascade.detect_threshold %v must be in (0,1)", k.DetectThreshold))
	}
	if k.BoxMargin < 0 || k.BoxMargin > k.Window/2 {
		errs = append(errs, fmt.Sprintf("cascade.box_margin %d out of range (0..%d)", k.BoxMargin, k.Window/2))
	}
	if k.MaxCandidates < 1 || k.Window*k.Window*k.MaxCandidates > MaxCascadePixels {
		errs = append(errs, fmt.Sprintf("cascade.max_candidates %d out of range (1..%d for window %d)",
			k.MaxCandidates, MaxCascadePixels/max(1, k.Window*k.Window), k.Window))
	}
	return errs
}

// validateVerifier checks the verifier section, when there is one.
func (c *Card) validateVerifier() []string {
	v := c.Verifier
	if v == nil {
		return nil
	}
	var errs []string
	if !c.IsCrop() {
		errs = append(errs, "verifier is for crop models only")
	}
	if v.File == "" || v.File != filepath.Base(v.File) || v.File == ModelFile || v.File == CardFile || strings.HasPrefix(v.File, ".") {
		errs = append(errs, fmt.Sprintf("verifier.file %q must name another file in the model's folder", v.File))
	}
	if len(v.SHA256) != 64 {
		errs = append(errs, "verifier.sha256 must be 64 hex digits")
	}
	if v.Patch < 8 || v.Patch > 256 {
		errs = append(errs, fmt.Sprintf("verifier.patch %d out of range (8..256)", v.Patch))
	}
	if v.Normalisation.Kind != "window" || v.Normalisation.Width <= 0 {
		errs = append(errs, "verifier.normalisation must be a window of positive width")
	}
	if v.Threshold < 0 || v.Threshold >= 1 {
		errs = append(errs, fmt.Sprintf("verifier.threshold %v must be in [0,1)", v.Threshold))
	}
	if z := v.Zoom; z != nil && (z.Margin < 0 || z.Margin > v.Patch || z.MaxFactor < 1 || z.MaxFactor > 16) {
		errs = append(errs, fmt.Sprintf("verifier.zoom margin %d / max_factor %d out of range (0..patch / 1..16)", z.Margin, z.MaxFactor))
	}
	return errs
}

// VerifyChecksum compares the model file's sha256 with the card's.
func (c *Card) VerifyChecksum() error {
	return checkFile(c.Name, c.Path(), c.SHA256)
}

// VerifyVerifierChecksum compares the verifier file's sha256 with the
// card's verifier section; nil without a verifier.
func (c *Card) VerifyVerifierChecksum() error {
	if c.Verifier == nil {
		return nil
	}
	return checkFile(c.Name+" verifier", c.VerifierPath(), c.Verifier.SHA256)
}

// checkFile compares the sha256 of the file at path with want.
func checkFile(what, path, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	got := hex.EncodeToString(h.Sum(nil))
	if !strings.EqualFold(got, want) {
		return fmt.Errorf("%w: %s: file %s, card %s", ErrChecksum, what, got, want)
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
	if v := c.Verifier; v != nil {
		if v.InputName == "" {
			v.InputName = "input"
		}
		if v.OutputName == "" {
			v.OutputName = "logits"
		}
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
	crops map[string]*Card // detector name → its crop model
}

// OpenRegistry reads every <dir>/<name>/card.json. Folders without a card
// are ignored; a bad card is an error.
func OpenRegistry(dir string) (*Registry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("model: reading registry: %w", err)
	}
	r := &Registry{Dir: dir, cards: map[string]*Card{}, crops: map[string]*Card{}}
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
	for _, c := range r.cards {
		if !c.IsCrop() {
			continue
		}
		if d, ok := r.cards[c.Detector]; !ok || d.IsCrop() {
			continue // no whole-slice detector: the crop model is not runnable
		}
		if o, ok := r.crops[c.Detector]; ok {
			a, b := min(o.Name, c.Name), max(o.Name, c.Name)
			return nil, fmt.Errorf("%w: crop models %s and %s both pair with detector %s", ErrBadCard, a, b, c.Detector)
		}
		r.crops[c.Detector] = c
	}
	return r, nil
}

// Names returns the names of the whole-slice models, sorted. Crop models
// are left out (AllNames lists them too).
func (r *Registry) Names() []string {
	var n []string
	for k, c := range r.cards {
		if !c.IsCrop() {
			n = append(n, k)
		}
	}
	sort.Strings(n)
	return n
}

// AllNames returns the names of every card, crop models included, sorted:
// every model a slice can be sent to on its own.
func (r *Registry) AllNames() []string {
	n := make([]string, 0, len(r.cards))
	for k := range r.cards {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Crop returns the crop model paired with a whole-slice detector, if the
// registry has one.
func (r *Registry) Crop(detector string) (*Card, bool) {
	c, ok := r.crops[detector]
	return c, ok
}

// Cascades returns the runnable cascade selections ("<detector>+crop"),
// sorted: one for each crop model whose detector is in the registry.
func (r *Registry) Cascades() []string {
	n := make([]string, 0, len(r.crops))
	for d := range r.crops {
		n = append(n, d+CropSuffix)
	}
	sort.Strings(n)
	return n
}

// Get returns the card of one model.
func (r *Registry) Get(name string) (*Card, error) {
	c, ok := r.cards[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (registry %s has %s)", ErrUnknownModel, name, r.Dir, strings.Join(r.AllNames(), ", "))
	}
	return c, nil
}

// TTASuffix names the test-time-augmented variant of a model: "m+tta" runs
// model m with flip TTA and is scored as a model of its own, so a replay can
// compare the two.
const TTASuffix = "+tta"

// CropSuffix names the cascade of a whole-slice model: "m+crop" runs model
// m as a detector and refines its candidates with the crop model paired
// with m (Registry.Crop); it is scored as a model of its own. There is no
// "m+crop+tta".
const CropSuffix = "+crop"

// SplitVariant returns the registry model behind a selection name (the
// whole-slice model whose segment workers serve it: "m" for "m", "m+tta"
// and "m+crop") and whether it asks for TTA. IsCascade tells a cascade.
func SplitVariant(name string) (base string, tta bool) {
	if b, ok := strings.CutSuffix(name, TTASuffix); ok {
		name, tta = b, true
	}
	if b, ok := strings.CutSuffix(name, CropSuffix); ok {
		name = b
	}
	return name, tta
}

// IsCascade reports whether a selection name is a cascade ("m+crop").
func IsCascade(name string) bool { return strings.HasSuffix(name, CropSuffix) }

// Resolve expands a model selection: "all" means every model, whole-slice
// and crop (AllNames), then every runnable cascade (Cascades), "all+tta"
// every model's TTA variant, "all+crop" every cascade, each without the
// quantised variants (selected by name only); names are checked
// ("m+crop" needs a whole-slice m with a crop model paired with it);
// duplicates are dropped; the order is kept.
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
			switch part {
			case "":
			case "all":
				for _, m := range r.AllNames() {
					if !r.quantized(m) {
						add(m)
					}
				}
				for _, m := range r.Cascades() {
					if !r.quantized(m) {
						add(m)
					}
				}
			case "all" + TTASuffix:
				for _, m := range r.AllNames() {
					if !r.quantized(m) {
						add(m + TTASuffix)
					}
				}
			case "all" + CropSuffix:
				for _, m := range r.Cascades() {
					if !r.quantized(m) {
						add(m)
					}
				}
			default:
				if err := r.check(part); err != nil {
					return nil, err
				}
				add(part)
			}
		}
	}
	return out, nil
}

// quantized reports whether a model or cascade selection runs a quantised
// model (a cascade: its detector or its crop model).
func (r *Registry) quantized(sel string) bool {
	base, _ := SplitVariant(sel)
	if c, ok := r.cards[base]; ok && c.Quantized() {
		return true
	}
	if crop, ok := r.crops[base]; ok && IsCascade(sel) && crop.Quantized() {
		return true
	}
	return false
}

// QuantizedOf returns the quantised variants made from the float model
// name, in name order.
func (r *Registry) QuantizedOf(name string) []*Card {
	var out []*Card
	for _, n := range r.AllNames() {
		if c := r.cards[n]; c.Quantized() && c.Quantization.From.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// check validates one selection name.
func (r *Registry) check(sel string) error {
	base, tta := SplitVariant(sel)
	crop := strings.Contains(sel, CropSuffix)
	if crop && (tta || !IsCascade(sel)) {
		return fmt.Errorf("%w %q: a cascade has no TTA variant", ErrUnknownModel, sel)
	}
	c, err := r.Get(base)
	if err != nil {
		return err
	}
	if crop && c.IsCrop() {
		return fmt.Errorf("%w %q: %s is a crop model; its cascade is %s%s", ErrUnknownModel, sel, c.Name, c.Detector, CropSuffix)
	}
	if crop {
		if _, ok := r.Crop(base); !ok {
			return fmt.Errorf("%w %q: registry %s has no crop model with detector %s", ErrUnknownModel, sel, r.Dir, base)
		}
	}
	return nil
}
