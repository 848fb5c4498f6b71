package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/preprocess"
	"github.com/lungseg/lungseg/segment/infer"
)

// BatchTiming is one side's time for one batch size.
type BatchTiming struct {
	Batch int `json:"batch"`
	// Samples are the timed runs, over all rounds.
	Samples int `json:"samples"`
	// MsPerBatch is the median time of one run; MsPerImage is that over
	// Batch; ImagesPerS is its inverse.
	MsPerBatch float64 `json:"ms_per_batch"`
	MsPerImage float64 `json:"ms_per_image"`
	ImagesPerS float64 `json:"images_per_s"`
	// MsPerImageSpread is the min, median and max over the Samples.
	MsPerImageSpread Spread `json:"ms_per_image_spread"`
}

// Side is one implementation's timings for one model and thread count.
type Side struct {
	Batches []BatchTiming `json:"batches"`
	// Batch1Ms is the median latency of one image at batch 1.
	Batch1Ms float64 `json:"batch1_ms"`
	// Batch1Spread is the min, median and max of those latencies.
	Batch1Spread Spread `json:"batch1_spread"`
	// BestBatch is the batch with the highest ImagesPerS.
	BestBatch      int     `json:"best_batch"`
	BestImagesPerS float64 `json:"best_images_per_s"`
}

// Inference compares ONNX Runtime in Go with PyTorch eager on one model
// at one thread count.
type Inference struct {
	Model   string `json:"model"`
	Threads int    `json:"threads"`
	Go      Side   `json:"go"`
	Torch   *Side  `json:"torch,omitempty"`
	// TorchVersion, TorchParity (the largest difference of the converted
	// PyTorch model from the model's parity output) and the weights the
	// helper mapped by name / in total.
	TorchVersion string  `json:"torch_version,omitempty"`
	TorchParity  float64 `json:"torch_parity_max_abs_diff,omitempty"`
	TorchWeights string  `json:"torch_weights,omitempty"`
	TorchPeakMB  float64 `json:"torch_peak_rss_mb,omitempty"`
	TorchSkipped string  `json:"torch_skipped,omitempty"`
	// Provider is the execution provider the Go session ran on.
	Provider string `json:"provider"`
	// GFLOPsPerImage is the card's training.flops_per_image; GoGFLOPS the
	// FLOP rate of the Go side's best batch, and PeakFraction that over
	// Options.PeakTFLOPs.
	GFLOPsPerImage float64 `json:"gflops_per_image,omitempty"`
	GoGFLOPS       float64 `json:"go_gflops,omitempty"`
	PeakFraction   float64 `json:"peak_fraction,omitempty"`
	// RatioBatch1 is Go's time per image over PyTorch's at batch 1;
	// RatioBest the same at each side's best batch (target ≤ 0.5).
	RatioBatch1 float64 `json:"ratio_batch1,omitempty"`
	RatioBest   float64 `json:"ratio_best,omitempty"`
	// An int8 variant (card.quantization) is measured against its float
	// model in the same run instead of PyTorch: FloatModel, RatioFloat
	// (int8 time per image over the float model's at batch 1, same
	// threads), and the mean Dice the card says quantisation cost on the
	// validation bare crops (crop models; absent for whole-slice ones).
	FloatModel      string   `json:"float_model,omitempty"`
	RatioFloat      float64  `json:"ratio_float,omitempty"`
	ValDiceLossCard *float64 `json:"val_dice_loss_card,omitempty"`
}

// benchInputs makes n model inputs from phantom slices for card.
func benchInputs(card *model.Card, n int) []float32 {
	px := card.Input.Height * card.Input.Width
	out := make([]float32, 0, n*px)
	for _, s := range phantom.Generate(9, n, phantom.Options{Series: true}) {
		out = append(out, preprocess.Input(s.HU, card)...)
	}
	return out
}

// batchOf returns b images cycled from xs (n images of px values).
func batchOf(xs []float32, n, px, b int) []float32 {
	out := make([]float32, 0, b*px)
	for i := 0; i < b; i++ {
		j := i % n
		out = append(out, xs[j*px:(j+1)*px]...)
	}
	return out
}

func writeFloat32(path string, v []float32) error {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return os.WriteFile(path, b, 0o644)
}

// repsFor is the runs of one batch size in one round: at least 4 images.
func repsFor(b int) int {
	if b >= 4 {
		return 1
	}
	return (4 + b - 1) / b
}

type torchHello struct {
	Torch   string   `json:"torch"`
	Threads int      `json:"threads"`
	Parity  *float64 `json:"parity_max_abs_diff"`
	Weights struct {
		ByName int `json:"by_name"`
		Total  int `json:"total"`
	} `json:"weights"`
	PeakMB float64 `json:"peak_rss_mb"`
}

type timingReq struct {
	Batch int `json:"batch,omitempty"`
	Reps  int `json:"reps"`
}

type timingResp struct {
	Seconds []float64 `json:"seconds"`
	PeakMB  float64   `json:"peak_rss_mb"`
}

func (r *runner) inference(ctx context.Context, cards []*model.Card) error {
	torchErr := error(nil)
	if r.o.Provider != infer.ProviderCPU {
		torchErr = fmt.Errorf("provider %s: the PyTorch reference is CPU-only", r.o.Provider)
	} else if r.py == "" {
		torchErr = fmt.Errorf("no python")
	} else if r.o.TrainDir == "" {
		torchErr = fmt.Errorf("no train/lungseg_train/models.py found (set --train-dir)")
	} else {
		torchErr = pyHas(ctx, r.py, "torch", "onnx", "numpy")
	}
	if torchErr != nil {
		r.skip("PyTorch side of inference: %v", torchErr)
	}
	for _, card := range cards {
		px := card.Input.Height * card.Input.Width
		xs := benchInputs(card, r.o.N)
		inPath := filepath.Join(r.tmp, card.Name+".inputs.bin")
		if err := writeFloat32(inPath, xs); err != nil {
			return err
		}
		batches := map[int][]float32{}
		for _, b := range r.o.Batches {
			batches[b] = batchOf(xs, r.o.N, px, b)
		}
		for _, t := range r.o.Threads {
			res := Inference{Model: card.Name, Threads: t}
			sess, err := infer.Open(card, r.o.infer(t), *r.o.Log)
			if err != nil {
				return fmt.Errorf("bench: opening %s: %w", card.Name, err)
			}
			var torch *pyServer
			if card.Quantized() {
				res.FloatModel = card.Quantization.From.Name
				res.TorchSkipped = "int8 variant: measured against " + res.FloatModel + " in this run"
				if q := card.Quantization; q.ValBareFloat != nil && q.ValBareInt8 != nil {
					loss := q.ValBareFloat.Mean - q.ValBareInt8.Mean
					res.ValDiceLossCard = &loss
				}
			} else if torchErr == nil {
				var hello torchHello
				torch, err = startPy(ctx, r.py, filepath.Join(r.tmp, "torch_infer.py"),
					[]string{"OMP_NUM_THREADS=" + strconv.Itoa(t), "MKL_NUM_THREADS=" + strconv.Itoa(t)}, &hello,
					"--train-dir", r.o.TrainDir, "--model-dir", card.Dir, "--inputs", inPath,
					"--n", strconv.Itoa(r.o.N), "--threads", strconv.Itoa(t))
				if err != nil {
					res.TorchSkipped = err.Error()
					r.skip("PyTorch %s: %v", card.Name, err)
				} else {
					res.TorchVersion = hello.Torch
					if hello.Parity != nil {
						res.TorchParity = *hello.Parity
					}
					res.TorchWeights = fmt.Sprintf("%d of %d by name, the rest from the graph", hello.Weights.ByName, hello.Weights.Total)
				}
			} else {
				res.TorchSkipped = torchErr.Error()
			}
			goSecs := map[int][]float64{}
			pySecs := map[int][]float64{}
			// warm-up: one untimed run of every batch size on both sides
			for _, b := range r.o.Batches {
				if _, err := sess.Run(batches[b], b); err != nil {
					sess.Close()
					return err
				}
				if torch != nil {
					var resp timingResp
					if err := torch.call(timingReq{Batch: b, Reps: 1}, &resp); err != nil {
						torch.Close()
						torch = nil
						res.TorchSkipped = err.Error()
						r.skip("PyTorch %s: %v", card.Name, err)
					}
				}
			}
			for round := 0; round < r.o.Rounds; round++ {
				for _, b := range r.o.Batches {
					reps := repsFor(b)
					goFirst := round%2 == 0
					runGo := func() error {
						for i := 0; i < reps; i++ {
							st := time.Now()
							if _, err := sess.Run(batches[b], b); err != nil {
								return err
							}
							goSecs[b] = append(goSecs[b], time.Since(st).Seconds())
						}
						return nil
					}
					runPy := func() error {
						if torch == nil {
							return nil
						}
						var resp timingResp
						if err := torch.call(timingReq{Batch: b, Reps: reps}, &resp); err != nil {
							return err
						}
						pySecs[b] = append(pySecs[b], resp.Seconds...)
						res.TorchPeakMB = max(res.TorchPeakMB, resp.PeakMB)
						return nil
					}
					first, second := runGo, runPy
					if !goFirst {
						first, second = runPy, runGo
					}
					if err := first(); err != nil {
						sess.Close()
						return err
					}
					if err := second(); err != nil {
						sess.Close()
						return err
					}
				}
			}
			sess.Close()
			if torch != nil {
				torch.Close()
			}
			res.Go = side(goSecs, r.o.Batches)
			res.Provider = sess.Provider()
			if f := cardFLOPs(card); f > 0 {
				res.GFLOPsPerImage = f / 1e9
				res.GoGFLOPS = res.Go.BestImagesPerS * f / 1e9
				if r.o.PeakTFLOPs > 0 {
					res.PeakFraction = res.GoGFLOPS / (1000 * r.o.PeakTFLOPs)
				}
			}
			if len(pySecs) > 0 {
				ts := side(pySecs, r.o.Batches)
				res.Torch = &ts
				res.RatioBatch1 = ratio(res.Go.Batch1Ms, ts.Batch1Ms)
				res.RatioBest = ratio(ts.BestImagesPerS, res.Go.BestImagesPerS)
			}
			if res.FloatModel != "" {
				for _, f := range r.rep.Inference {
					if f.Model == res.FloatModel && f.Threads == t {
						res.RatioFloat = ratio(res.Go.Batch1Ms, f.Go.Batch1Ms)
					}
				}
			}
			r.rep.Inference = append(r.rep.Inference, res)
			line := fmt.Sprintf("inference %s threads %d: go %.1f ms/img at batch 1, best %.2f img/s (batch %d)",
				card.Name, t, res.Go.Batch1Ms, res.Go.BestImagesPerS, res.Go.BestBatch)
			if res.RatioFloat > 0 {
				line += fmt.Sprintf("; %.2f× the time of %s", res.RatioFloat, res.FloatModel)
			}
			if res.Torch != nil {
				line += fmt.Sprintf("; torch %.1f ms, best %.2f img/s (batch %d); ratio %.2f / %.2f",
					res.Torch.Batch1Ms, res.Torch.BestImagesPerS, res.Torch.BestBatch, res.RatioBatch1, res.RatioBest)
			}
			r.progress("%s", line)
		}
	}
	return nil
}

// side summarises timings by batch size.
func side(secs map[int][]float64, order []int) Side {
	var s Side
	for _, b := range order {
		xs := secs[b]
		if len(xs) == 0 {
			continue
		}
		m := median(xs) * 1000
		bt := BatchTiming{Batch: b, Samples: len(xs), MsPerBatch: m, MsPerImage: m / float64(b), ImagesPerS: 1000 * float64(b) / m,
			MsPerImageSpread: spreadOf(xs).scaled(1000 / float64(b))}
		s.Batches = append(s.Batches, bt)
		if b == 1 {
			s.Batch1Ms, s.Batch1Spread = m, bt.MsPerImageSpread
		}
		if bt.ImagesPerS > s.BestImagesPerS {
			s.BestImagesPerS, s.BestBatch = bt.ImagesPerS, b
		}
	}
	return s
}

// cardFLOPs reads training.flops_per_image from a card (0 when absent).
func cardFLOPs(card *model.Card) float64 {
	var t struct {
		FLOPs float64 `json:"flops_per_image"`
	}
	if len(card.Training) == 0 || json.Unmarshal(card.Training, &t) != nil {
		return 0
	}
	return t.FLOPs
}
