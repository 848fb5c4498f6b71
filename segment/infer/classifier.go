package infer

import (
	"fmt"
	"math"
	"sync"

	"github.com/lungseg/lungseg/pkg/model"
	ort "github.com/yalue/onnxruntime_go"
)

// Classifier is an open crop model's verifier (model.Verifier): it takes
// NCHW float32 [N,2,Patch,Patch] and returns one probability per image.
// It always runs on the CPU: it is small, and it runs once per component.
// Run is safe for concurrent use.
type Classifier struct {
	name  string
	patch int

	mu   sync.RWMutex
	sess *ort.DynamicAdvancedSession
}

// ClassifierChannels is the verifier's input channels: HU and component.
const ClassifierChannels = 2

// OpenClassifier opens card's verifier after checking its file against
// the card's sha256 and its declared input [N,2,Patch,Patch] and output
// [N,1]. opts gives the threads; the provider is always cpu.
func OpenClassifier(card *model.Card, opts Options) (*Classifier, error) {
	if card == nil || card.Verifier == nil {
		return nil, fmt.Errorf("%w: no verifier in the card", ErrOptions)
	}
	opts, err := opts.normalise()
	if err != nil {
		return nil, err
	}
	if !ort.IsInitialized() {
		return nil, ErrNotInitialised
	}
	v := card.Verifier
	path := card.VerifierPath()
	if err := card.VerifyVerifierChecksum(); err != nil {
		return nil, fmt.Errorf("infer: verifying %s's verifier: %w", card.Name, err)
	}
	if err := checkClassifierIO(path, v.InputName, v.OutputName, v.Patch); err != nil {
		return nil, fmt.Errorf("%w: %s's verifier: %v", ErrModel, card.Name, err)
	}
	opts.Provider = ProviderCPU
	sess, err := openOn(ProviderCPU, path, v.InputName, v.OutputName, opts)
	if err != nil {
		return nil, fmt.Errorf("infer: opening %s's verifier: %w", card.Name, err)
	}
	c := &Classifier{name: card.Name, patch: v.Patch, sess: sess}
	if _, err := c.Run(make([]float32, ClassifierChannels*v.Patch*v.Patch), 1); err != nil {
		sess.Destroy()
		return nil, err
	}
	return c, nil
}

// checkClassifierIO checks the verifier's declared input [N,2,P,P] and
// output [N,1], float32 (any dimension may be symbolic).
func checkClassifierIO(path, inName, outName string, p int) error {
	ins, outs, err := ort.GetInputOutputInfo(path)
	if err != nil {
		return fmt.Errorf("reading inputs and outputs: %w", err)
	}
	if _, err := findTensor("input", inName, ins, ClassifierChannels, p, p); err != nil {
		return err
	}
	_, err = findTensor("output", outName, outs, 1)
	return err
}

// Run classifies n images laid out as [n,2,Patch,Patch] and returns n
// probabilities (the sigmoid of the verifier's logits).
func (c *Classifier) Run(input []float32, n int) ([]float32, error) {
	px := ClassifierChannels * c.patch * c.patch
	if n < 1 || n > MaxBatch {
		return nil, fmt.Errorf("%w: batch of %d (want 1..%d)", ErrInput, n, MaxBatch)
	}
	if len(input) != n*px {
		return nil, fmt.Errorf("%w: %d values for %d verifier patches of %d values", ErrInput, len(input), n, px)
	}
	for i, v := range input {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("%w: %v in verifier patch %d", ErrInput, v, i/px)
		}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.sess == nil {
		return nil, ErrClosed
	}
	in, err := ort.NewTensor(ort.NewShape(int64(n), ClassifierChannels, int64(c.patch), int64(c.patch)), input)
	if err != nil {
		return nil, fmt.Errorf("infer: creating verifier input tensor: %w", err)
	}
	defer in.Destroy()
	out := make([]float32, n)
	ot, err := ort.NewTensor(ort.NewShape(int64(n), 1), out)
	if err != nil {
		return nil, fmt.Errorf("infer: creating verifier output tensor: %w", err)
	}
	defer ot.Destroy()
	if err := c.sess.Run([]ort.Value{in}, []ort.Value{ot}); err != nil {
		return nil, fmt.Errorf("infer: running %s's verifier: %w", c.name, err)
	}
	for i, v := range out {
		out[i] = sigmoid(v)
	}
	return out, nil
}

// Close releases the session after runs in flight; closing twice is a
// no-op.
func (c *Classifier) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil {
		c.sess.Destroy()
		c.sess = nil
	}
	return nil
}
