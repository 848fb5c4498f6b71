// Package infer runs one segmentation model with ONNX Runtime through
// github.com/yalue/onnxruntime_go. A Session takes batches of normalised
// single-channel images, NCHW float32 [N,1,H,W] with H×W from the model
// card, and returns per-pixel probabilities in the same layout.
//
// ONNX Runtime must be loaded first with ortlib.Init. The library ortlib
// fetches is a CPU build; cuda and tensorrt need a GPU build of the same
// version named by $LUNGSEG_ORT_LIB, with its provider libraries
// (libonnxruntime_providers_shared.so and the provider's own) beside it.
// Without them Open logs a warning and falls back to cpu.
package infer

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/rs/zerolog"
	ort "github.com/yalue/onnxruntime_go"
)

// Execution providers accepted in Options.Provider.
const (
	ProviderCPU      = "cpu"
	ProviderCUDA     = "cuda"
	ProviderTensorRT = "tensorrt"
)

// Sentinel errors.
var (
	ErrNotInitialised = errors.New("infer: onnx runtime not initialised (call ortlib.Init first)")
	ErrOptions        = errors.New("infer: bad options")
	ErrModel          = errors.New("infer: model does not match its card")
	ErrInput          = errors.New("infer: bad input")
	ErrClosed         = errors.New("infer: session closed")
)

// MaxBatch caps the images in one Run.
const MaxBatch = 1024

// Options configure a Session.
type Options struct {
	// Provider is "cpu" (default), "cuda" or "tensorrt". A GPU provider
	// that cannot be loaded is logged at warn level and replaced: tensorrt
	// by cuda, cuda by cpu.
	Provider string
	// IntraOpThreads is ONNX Runtime's intra-op thread count; 0 means 1,
	// which measured fastest for small models on few cores.
	IntraOpThreads int
	// InterOpThreads is the inter-op thread count; 0 leaves ONNX Runtime's
	// default.
	InterOpThreads int
	// DeviceID is the GPU ordinal for cuda and tensorrt.
	DeviceID int
	// FP16 lets TensorRT build half-precision kernels. Inputs and outputs
	// stay float32; cpu and cuda ignore it.
	FP16 bool
	// GraphOptimization is ONNX Runtime's graph optimisation level: "all"
	// (default), "extended", "basic" or "none". Fusions reorder float
	// arithmetic, so "none" gives the closest match to PyTorch.
	GraphOptimization string
	// Spin lets the intra-op threads spin-wait for work between operators
	// (ONNX Runtime's own default). Off by default: the pipeline runs several
	// sessions at once (segment workers, models), and their spinning threads
	// take the cores from each other. Measured on 2 cores, resnet50-unet-small
	// at 2 threads with two segment workers (`lungseg bench --sections
	// pipeline`): pipeline/bare-loop 0.74-0.88 spinning, 0.92-0.95 not, the
	// bare loop itself unchanged.
	Spin bool
}

var graphLevels = map[string]ort.GraphOptimizationLevel{
	"":         ort.GraphOptimizationLevelEnableAll,
	"all":      ort.GraphOptimizationLevelEnableAll,
	"extended": ort.GraphOptimizationLevelEnableExtended,
	"basic":    ort.GraphOptimizationLevelEnableBasic,
	"none":     ort.GraphOptimizationLevelDisableAll,
}

// normalise fills defaults and checks ranges.
func (o Options) normalise() (Options, error) {
	o.Provider = strings.ToLower(strings.TrimSpace(o.Provider))
	if o.Provider == "" {
		o.Provider = ProviderCPU
	}
	switch o.Provider {
	case ProviderCPU, ProviderCUDA, ProviderTensorRT:
	default:
		return o, fmt.Errorf("%w: provider %q (want cpu, cuda or tensorrt)", ErrOptions, o.Provider)
	}
	if o.IntraOpThreads == 0 {
		o.IntraOpThreads = 1
	}
	if o.IntraOpThreads < 0 || o.InterOpThreads < 0 || o.DeviceID < 0 {
		return o, fmt.Errorf("%w: negative thread count or device id (%d, %d, %d)",
			ErrOptions, o.IntraOpThreads, o.InterOpThreads, o.DeviceID)
	}
	return o, nil
}

// Session is an open model. Run is safe for concurrent use: ONNX Runtime
// sessions accept concurrent runs, and each Run has its own tensors. Close
// waits for runs in flight. For throughput on a few cores, prefer one
// Session per worker with IntraOpThreads 1 over one shared Session.
type Session struct {
	card     *model.Card
	h, w     int
	provider string
	sigmoid  bool
	fixed    int // the input's fixed batch size; 0 when the axis is dynamic

	mu   sync.RWMutex
	sess *ort.DynamicAdvancedSession
}

// Open verifies the model file against card's sha256, checks its input and
// output against the card, and opens it on the requested provider, falling
// back as Options.Provider says. It runs one all-zero image so that a
// provider which loads but cannot run is caught here, not on first use.
func Open(card *model.Card, opts Options, log zerolog.Logger) (*Session, error) {
	if card == nil {
		return nil, fmt.Errorf("%w: nil card", ErrOptions)
	}
	opts, err := opts.normalise()
	if err != nil {
		return nil, err
	}
	if !ort.IsInitialized() {
		return nil, ErrNotInitialised
	}
	if err := card.VerifyChecksum(); err != nil {
		return nil, fmt.Errorf("infer: verifying model %s: %w", card.Name, err)
	}
	inName, outName := card.InputName, card.OutputName
	if inName == "" {
		inName = "input"
	}
	if outName == "" {
		outName = "logits"
	}
	s := &Session{
		card:    card,
		h:       card.Input.Height,
		w:       card.Input.Width,
		sigmoid: card.Output == "logits",
	}
	if s.fixed, err = checkIO(card.Path(), inName, outName, s.h, s.w); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrModel, card.Name, err)
	}
	log = log.With().Str("model", card.Name).Logger()
	chain := map[string][]string{
		ProviderCPU:      {ProviderCPU},
		ProviderCUDA:     {ProviderCUDA, ProviderCPU},
		ProviderTensorRT: {ProviderTensorRT, ProviderCUDA, ProviderCPU},
	}[opts.Provider]
	for _, p := range chain {
		sess, err := openOn(p, card.Path(), inName, outName, opts)
		if err == nil {
			s.sess, s.provider = sess, p
			_, err = s.Run(make([]float32, s.h*s.w), 1)
			if err != nil {
				s.sess, s.provider = nil, ""
				sess.Destroy()
			}
		}
		if err == nil {
			break
		}
		if p == ProviderCPU {
			return nil, fmt.Errorf("infer: opening %s on cpu: %w", card.Name, err)
		}
		log.Warn().Err(err).Str("provider", p).Str("requested", opts.Provider).
			Msgf("execution provider %s unavailable, falling back", p)
	}
	log.Info().Str("provider", s.provider).Str("requested", opts.Provider).
		Int("intra_op_threads", opts.IntraOpThreads).Bool("fp16", opts.FP16 && s.provider == ProviderTensorRT).
		Msg("model session open")
	return s, nil
}

// openOn creates the ONNX Runtime session on one provider.
func openOn(provider, path, inName, outName string, o Options) (*ort.DynamicAdvancedSession, error) {
	so, err := sessionOptions(o)
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	switch provider {
	case ProviderTensorRT:
		if err := appendTensorRT(so, o); err != nil {
			return nil, err
		}
		// CUDA takes the nodes TensorRT cannot run.
		if err := appendCUDA(so, o); err != nil {
			return nil, err
		}
	case ProviderCUDA:
		if err := appendCUDA(so, o); err != nil {
			return nil, err
		}
	}
	sess, err := ort.NewDynamicAdvancedSession(path, []string{inName}, []string{outName}, so)
	if err != nil {
		return nil, fmt.Errorf("creating session: %w", err)
	}
	return sess, nil
}

// sessionOptions builds the provider-independent session options of o; the
// caller destroys them.
func sessionOptions(o Options) (*ort.SessionOptions, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("creating session options: %w", err)
	}
	if err := configure(so, o); err != nil {
		so.Destroy()
		return nil, err
	}
	return so, nil
}

func configure(so *ort.SessionOptions, o Options) error {
	if err := so.SetIntraOpNumThreads(o.IntraOpThreads); err != nil {
		return fmt.Errorf("setting intra-op threads: %w", err)
	}
	if !o.Spin {
		if err := so.AddSessionConfigEntry(spinKey, "0"); err != nil {
			return fmt.Errorf("turning spinning off: %w", err)
		}
	}
	level, ok := graphLevels[o.GraphOptimization]
	if !ok {
		return fmt.Errorf("%w: graph optimisation %q (want all, extended, basic or none)", ErrOptions, o.GraphOptimization)
	}
	if err := so.SetGraphOptimizationLevel(level); err != nil {
		return fmt.Errorf("setting graph optimisation: %w", err)
	}
	if o.InterOpThreads > 0 {
		if err := so.SetInterOpNumThreads(o.InterOpThreads); err != nil {
			return fmt.Errorf("setting inter-op threads: %w", err)
		}
	}
	return nil
}

// spinKey is ONNX Runtime's session config key for intra-op spin-waiting.
const spinKey = "session.intra_op.allow_spinning"

func appendCUDA(so *ort.SessionOptions, o Options) error {
	co, err := ort.NewCUDAProviderOptions()
	if err != nil {
		return fmt.Errorf("creating cuda options: %w", err)
	}
	defer co.Destroy()
	if err := co.Update(map[string]string{"device_id": strconv.Itoa(o.DeviceID)}); err != nil {
		return fmt.Errorf("setting cuda options: %w", err)
	}
	if err := so.AppendExecutionProviderCUDA(co); err != nil {
		return fmt.Errorf("appending cuda provider: %w", err)
	}
	return nil
}

func appendTensorRT(so *ort.SessionOptions, o Options) error {
	to, err := ort.NewTensorRTProviderOptions()
	if err != nil {
		return fmt.Errorf("creating tensorrt options: %w", err)
	}
	defer to.Destroy()
	m := map[string]string{"device_id": strconv.Itoa(o.DeviceID)}
	if o.FP16 {
		m["trt_fp16_enable"] = "1"
	}
	// Engines take long to build; keep them next to the ONNX Runtime cache.
	if root, err := ortlib.CacheDir(); err == nil {
		m["trt_engine_cache_enable"] = "1"
		m["trt_engine_cache_path"] = filepath.Join(root, "tensorrt")
	}
	if err := to.Update(m); err != nil {
		return fmt.Errorf("setting tensorrt options: %w", err)
	}
	if err := so.AppendExecutionProviderTensorRT(to); err != nil {
		return fmt.Errorf("appending tensorrt provider: %w", err)
	}
	return nil
}

// checkIO reads the model's declared input and output and checks that the
// named ones are float32 [N,1,H,W] (any dimension may be symbolic). It
// returns the input's batch size N, or 0 when that axis is dynamic.
func checkIO(path, inName, outName string, h, w int) (int, error) {
	ins, outs, err := ort.GetInputOutputInfo(path)
	if err != nil {
		return 0, fmt.Errorf("reading inputs and outputs: %w", err)
	}
	fixed, err := findTensor("input", inName, ins, 1, h, w)
	if err != nil {
		return 0, err
	}
	_, err = findTensor("output", outName, outs, 1, h, w)
	return fixed, err
}

// findTensor checks that infos declare a float32 tensor called name of
// shape [N, want...] (any dimension may be symbolic) and returns N, or 0
// when that axis is symbolic.
func findTensor(kind, name string, infos []ort.InputOutputInfo, want ...int) (int, error) {
	var names []string
	for _, i := range infos {
		if i.Name != name {
			names = append(names, i.Name)
			continue
		}
		if i.OrtValueType != ort.ONNXTypeTensor || i.DataType != ort.TensorElementDataTypeFloat {
			return 0, fmt.Errorf("%s %q is %v of %v, want a float32 tensor", kind, name, i.OrtValueType, i.DataType)
		}
		d := i.Dimensions
		ok := len(d) == len(want)+1
		for k := 0; ok && k < len(want); k++ {
			ok = d[k+1] < 0 || d[k+1] == int64(want[k])
		}
		if !ok {
			return 0, fmt.Errorf("%s %q has shape %v, want [N %s]", kind, name, d, strings.Trim(fmt.Sprint(want), "[]"))
		}
		return int(max(d[0], 0)), nil
	}
	return 0, fmt.Errorf("no %s %q (model has %s)", kind, name, strings.Join(names, ", "))
}

// Provider returns the execution provider actually in use.
func (s *Session) Provider() string { return s.provider }

// Card returns the model card the session was opened with.
func (s *Session) Card() *model.Card { return s.card }

// FixedBatch returns the batch size the model's input is fixed to, or 0
// when its batch axis is dynamic (any n up to MaxBatch per Run).
func (s *Session) FixedBatch() int { return s.fixed }

// Size returns the image height and width the model takes.
func (s *Session) Size() (h, w int) { return s.h, s.w }

// Run infers n images laid out as [n,1,H,W] (len(input) = n*H*W) and
// returns probabilities in the same layout: the model output, through a
// sigmoid when the card says its output is logits. input is only read.
func (s *Session) Run(input []float32, n int) ([]float32, error) {
	px := s.h * s.w
	if n < 1 || n > MaxBatch {
		return nil, fmt.Errorf("%w: batch of %d (want 1..%d)", ErrInput, n, MaxBatch)
	}
	if len(input) != n*px {
		return nil, fmt.Errorf("%w: %d values for %d images of %d×%d (want %d)", ErrInput, len(input), n, s.h, s.w, n*px)
	}
	for i, v := range input {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			p := i % px
			return nil, fmt.Errorf("%w: %v in image %d at x=%d y=%d", ErrInput, v, i/px, p%s.w, p/s.w)
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.sess == nil {
		return nil, ErrClosed
	}
	shape := ort.NewShape(int64(n), 1, int64(s.h), int64(s.w))
	in, err := ort.NewTensor(shape, input)
	if err != nil {
		return nil, fmt.Errorf("infer: creating input tensor: %w", err)
	}
	defer in.Destroy()
	out := make([]float32, n*px)
	ot, err := ort.NewTensor(shape, out)
	if err != nil {
		return nil, fmt.Errorf("infer: creating output tensor: %w", err)
	}
	defer ot.Destroy()
	if err := s.sess.Run([]ort.Value{in}, []ort.Value{ot}); err != nil {
		return nil, fmt.Errorf("infer: running %s on %s: %w", s.card.Name, s.provider, err)
	}
	if s.sigmoid {
		for i, v := range out {
			out[i] = sigmoid(v)
		}
	}
	return out, nil
}

// sigmoid is the logistic function, computed without overflow.
func sigmoid(x float32) float32 {
	if x >= 0 {
		return float32(1 / (1 + math.Exp(-float64(x))))
	}
	e := math.Exp(float64(x))
	return float32(e / (1 + e))
}

// Close releases the session after runs in flight finish. Later Runs
// return ErrClosed; closing twice is a no-op.
func (s *Session) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess == nil {
		return nil
	}
	err := s.sess.Destroy()
	s.sess = nil
	if err != nil {
		return fmt.Errorf("infer: closing %s: %w", s.card.Name, err)
	}
	return nil
}
