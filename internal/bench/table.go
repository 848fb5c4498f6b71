package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints the report as plain-text tables.
func (rep *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	h := rep.Host
	p("host: %d CPUs %s/%s, %s, ONNX Runtime %s (%s); load average %v; n=%d, rounds=%d; python %s",
		h.CPUs, h.GOOS, h.GOARCH, h.Go, h.ORT, rep.Provider, h.LoadAverage, rep.N, rep.Rounds, orNone(rep.Python))
	if len(rep.Inference) > 0 {
		p("")
		p("INFERENCE\tTHREADS\tPROVIDER\tGO ms/img b1 [min–max]\tTORCH ms/img b1 [min–max]\tRATIO b1\tGO best img/s (b)\tTORCH best img/s (b)\tRATIO best\tTORCH PARITY\tGO GFLOP/s (of peak)")
		for _, in := range rep.Inference {
			tb1, tbest, rb1, rbest, par := "-", "-", "-", "-", "-"
			if t := in.Torch; t != nil {
				tb1 = t.Batch1Spread.format(1)
				tbest = fmt.Sprintf("%.2f (%d)", t.BestImagesPerS, t.BestBatch)
				rb1 = fmt.Sprintf("%.2f", in.RatioBatch1)
				rbest = fmt.Sprintf("%.2f", in.RatioBest)
				par = fmt.Sprintf("%.1e", in.TorchParity)
			}
			fl := "-"
			if in.GoGFLOPS > 0 {
				fl = fmt.Sprintf("%.1f", in.GoGFLOPS)
				if in.PeakFraction > 0 {
					fl += fmt.Sprintf(" (%.1f%%)", 100*in.PeakFraction)
				}
			}
			p("%s\t%d\t%s\t%s\t%s\t%s\t%.2f (%d)\t%s\t%s\t%s\t%s", in.Model, in.Threads, in.Provider, in.Go.Batch1Spread.format(1), tb1, rb1,
				in.Go.BestImagesPerS, in.Go.BestBatch, tbest, rbest, par, fl)
		}
	}
	var q8 []Inference
	for _, in := range rep.Inference {
		if in.FloatModel != "" {
			q8 = append(q8, in)
		}
	}
	if len(q8) > 0 {
		p("")
		p("INT8\tTHREADS\tFLOAT MODEL\tINT8 ms/img b1\tFLOAT ms/img b1\tRATIO b1\tVAL DICE LOSS (card)")
		for _, in := range q8 {
			fb1, loss := "-", "-"
			for _, f := range rep.Inference {
				if f.Model == in.FloatModel && f.Threads == in.Threads {
					fb1 = fmt.Sprintf("%.1f", f.Go.Batch1Ms)
				}
			}
			if in.ValDiceLossCard != nil {
				loss = fmt.Sprintf("%+.4f", *in.ValDiceLossCard)
			}
			p("%s\t%d\t%s\t%.1f\t%s\t%.2f\t%s", in.Model, in.Threads, in.FloatModel, in.Go.Batch1Ms, fb1, in.RatioFloat, loss)
		}
	}
	if len(rep.Pipeline) > 0 {
		p("")
		p("PIPELINE\tTHREADS\tSLICES\tPIPELINE slices/s [min–max]\tBARE LOOP slices/s [min–max]\tRATIO (rounds: [min–max])\tINFERENCE SHARE")
		for _, x := range rep.Pipeline {
			p("%s\t%d\t%d\t%s\t%s\t%.2f (%s)\t%.0f%%", x.Model, x.Threads, x.Slices, x.PipelineSpread.format(2), x.BareSpread.format(2), x.Ratio,
				x.RatioSpread.format(2), 100*x.InferenceShare)
		}
	}
	if len(rep.Batching) > 0 {
		p("")
		p("BATCHING\tTHREADS\tMAX BATCH\tWAIT ms\tWORKERS\tUNBATCHED slices/s [min–max]\tBATCHED slices/s [min–max]\tGAIN (rounds: [min–max])\tMEAN BATCH")
		for _, b := range rep.Batching {
			p("%s\t%d\t%d\t%g\t%d\t%s\t%s\t%.2f (%s)\t%.2f", b.Model, b.Threads, b.MaxBatch, b.MaxWaitMs, b.Workers,
				b.UnbatchedSpread.format(2), b.BatchedSpread.format(2), b.Gain, b.GainSpread.format(2), b.MeanBatch)
		}
	}
	if d := rep.Decode; d != nil {
		p("")
		p("DECODE\tREFERENCE\tITEMS\tMB\tGO ms/item [min–max]\tREFERENCE ms/item [min–max]\tSPEEDUP [min–max]\tGO PEAK +MB\tREFERENCE PEAK +MB")
		row := func(name string, c *DecodeCompare) {
			if c == nil {
				return
			}
			ref := c.Reference
			if ref == "" {
				ref = "pandas"
			}
			pm, pp, sp := "-", "-", "-"
			if c.Python != nil {
				pm = c.Python.PerItemSpread.format(3)
				pp = fmt.Sprintf("%.1f", c.Python.PeakMB)
				sp = c.SpeedupSpread.format(2)
			}
			line := func(name string, g *DecodeSide, sp string) {
				p("%s\t%s\t%d\t%.1f\t%s\t%s\t%s\t%.1f\t%s", name, ref, c.Items, float64(c.Bytes)/1e6, g.PerItemSpread.format(3), pm, sp, g.PeakMB, pp)
			}
			line(name, &c.Go, sp)
			if f := c.GoFresh; f != nil {
				fsp := "-"
				if c.FreshSpeedupSpread != nil {
					fsp = c.FreshSpeedupSpread.format(2)
				}
				line(name+", fresh memory (ReadFile)", f, fsp)
			}
		}
		row("dicom phantoms (native)", d.DICOM)
		for _, c := range d.Real {
			row("dicom "+c.Name, c)
		}
		row("pickle", d.Pickle)
		row("pickle 2N (memory)", d.PickleLarge)
		if c := d.RLE; c != nil {
			p("")
			p("RLE DECOMPRESSION\tFILES\tGO READ RLE ms\tGO READ NATIVE ms\tGO NET ms\tDCMDRLE ms\tDCMCONV ms\tDCMTK NET ms\tSPEEDUP (net)\tSPEEDUP (whole)")
			p("%s\t%d\t%s\t%s\t%.2f\t%s\t%s\t%.2f\t%.2f\t%.2f", c.Name, c.Items, c.GoRLEMs.format(2), c.GoNativeMs.format(2), c.GoNetMs,
				c.DcmdrleMs.format(1), c.DcmconvMs.format(1), c.DcmtkNetMs, c.Speedup, c.WholeSpeedup)
		}
	}
	if len(rep.Cascade) > 0 {
		p("")
		p("CASCADE\tTHREADS\tSLICES\tDETECTOR ms/slice [min–max]\tCASCADE ms/slice (windows)\tRATIO\tWITH LUNG FIELD ms/slice [min–max] (windows)\tRATIO (rounds: [min–max])\tFIELD ms/slice\tREFINE ms/slice\tBESIDE DETECTOR RATIO\tSLICES FROM")
		for _, c := range rep.Cascade {
			name := c.Model
			if c.Verified {
				name += " (verified)"
			}
			p("%s\t%d\t%d\t%s\t%.1f (%.2f)\t%.2f\t%s (%.2f)\t%.2f (%s)\t%.1f\t%.1f\t%.2f\t%s", name, c.Threads, c.Slices, c.DetectorSpread.format(1),
				c.NoFieldMs, c.NoFieldWindows, c.RatioNoField, c.FieldSpread.format(1), c.FieldWindows, c.RatioField, c.RatioFieldSpread.format(2),
				c.LungFieldMs, c.RefineMs, c.RatioBeside, c.Source)
		}
	}
	if len(rep.Series) > 0 {
		p("")
		p("SERIES (C-STORE)\tTHREADS\tSLICES\tFIRST BYTE TO SEG ms [min–max]\tBARE INFERENCE SUM ms\tRATIO\tRECEIVED ms (in acceptor)\tTHEN SCORED ms\tTHEN SEG ms (quiet)\tFIRST SCORE ms\tFIRST BYTE TO FINDINGS ms\tRATIO TO LAST SCORE\tPARTIAL SEGs")
		for _, x := range rep.Series {
			p("%s\t%d\t%d\t%s\t%s\t%s\t%s (%s)\t%s\t%s (%.0f)\t%s\t%s\t%s\t%d", x.Model, x.Threads, x.Slices, x.TotalMs.format(0), x.BareMs.format(0),
				x.Ratio.format(2), x.ReceiveMs.format(0), x.AcceptMs.format(0), x.ProcessMs.format(0), x.SEGMs.format(0), x.QuietMs, x.FirstScoreMs.format(0),
				x.FindingsMs.format(0), x.RatioToScores.format(2), x.PartialSEGs)
		}
	}
	if len(rep.Memory) > 0 {
		p("")
		p("MEMORY\tROWS\tBACKLOG BOUND\tPEAK RSS +MB (base)\tPEAK LIVE HEAP MB\tPEAK PENDING MB\tSTORE MB at 1/4,1/2,3/4,end (peak)\tslices/s")
		for _, m := range rep.Memory {
			p("%s\t%d\t%s\t%.0f (%.0f)\t%.0f\t%.0f\t%s (%.0f)\t%.1f", m.Model, m.Rows, backlogName(m.BacklogMB), m.PeakRSSMB, m.BaseRSSMB,
				m.PeakHeapMB, m.PeakPendingMB, floats(m.StoreMB), m.PeakStoreMB, m.SlicesPerS)
		}
	}
	if len(rep.Targets) > 0 {
		p("")
		p("TARGET\tGOAL\tVALUE\tMET\tNOTE")
		for _, t := range rep.Targets {
			met := "no"
			if t.Met {
				met = "yes"
			}
			p("%s\t%s\t%.2f\t%s\t%s", t.Name, t.Goal, t.Value, met, t.Note)
		}
	}
	if len(rep.Skipped) > 0 {
		p("")
		for _, s := range rep.Skipped {
			p("skipped: %s", strings.ReplaceAll(s, "\n", " "))
		}
	}
	return tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
