package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/internal/web"
	"github.com/lungseg/lungseg/pkg/overlay"
	"github.com/lungseg/lungseg/pkg/testenv"
)

// artifactsDir is where browser tests keep their screenshots:
// $LUNGSEG_ARTIFACTS, else out/artifacts in the repository (ignored by
// git).
func artifactsDir(t *testing.T) string {
	d := os.Getenv("LUNGSEG_ARTIFACTS")
	if d == "" {
		d = filepath.Join(testenv.RepoRoot(t), "out", "artifacts")
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// scrape reads a Prometheus text exposition into series → value, the
// series written as in the exposition (name{labels}).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// TestViewerInBrowser runs the whole pipeline with the viewer, opens the
// page in headless Chromium, replays phantom slices with two models, and
// checks what the page shows (cards with outlines in each model's colour,
// the running scores, the HU under the cursor in the large view) and what
// /metrics and /healthz report. The screenshots are kept as artefacts.
func TestViewerInBrowser(t *testing.T) {
	viewerReplay(t, testenv.RequireCommand(t, "chromium"))
}

// TestMetricsMoveWithReplay is the same replay without a browser: /healthz
// fails until the segment workers run, and /metrics counts exactly the
// work of the replay.
func TestMetricsMoveWithReplay(t *testing.T) {
	viewerReplay(t, "")
}

// viewerReplay runs a replay with the viewer; with a chromium path it
// also drives the page.
func viewerReplay(t *testing.T, chromium string) {
	reg := testRegistry(t)
	dir := t.TempDir()
	const n = 6
	popts := phantom.Options{Rows: 128, Cols: 128, Series: true, MaxNodules: 2}
	in, err := writePhantoms(filepath.Join(dir, "png"), "png", 11, n, popts)
	if err != nil {
		t.Fatal(err)
	}
	truth := phantomsByName(11, n, popts)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cfg := defaultConfig()
	cfg.ModelsDir, cfg.LogLevel, cfg.Listen = reg, "warn", ""
	cfg.InputRoots = []string{dir} // ingest reads only under its input roots
	log := newLogger(cfg.LogLevel, os.Stderr)
	node, err := connect(ctx, &cfg, "lungseg-test", true, log)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	wctx, stopWeb := context.WithCancel(ctx)
	wh, err := startWeb(wctx, node.js, webOptions{Addr: "127.0.0.1:0", Models: []string{"tiny", "tiny-low", "tiny+tta"}, PollEvery: 100 * time.Millisecond}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		stopWeb()
		if err := wh.Wait(); err != nil {
			t.Error(err)
		}
	}()
	base := "http://" + wh.Addr

	// Before the pipeline runs: unhealthy (no segment workers), no counts.
	health := func() (int, web.Health) {
		r, err := http.Get(base + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		var h web.Health
		_ = json.NewDecoder(r.Body).Decode(&h)
		return r.StatusCode, h
	}
	if code, h := health(); code != 503 || h.Checks["nats"] != "ok" || h.Checks["model:tiny"] == "ok" {
		t.Errorf("health before the pipeline: %d %+v", code, h)
	}
	before := scrape(t, base+"/metrics")
	if v, ok := before[`lungseg_stage_messages_received_total{stage="score"}`]; ok {
		t.Errorf("score messages counted before any replay: %v", v)
	}

	pc, err := pipelineConfig(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	pc.Hooks = wh.Metrics.Hooks()
	pctx, stopPipe := context.WithCancel(ctx)
	perr := make(chan error, 1)
	go func() { perr <- pipeline.Run(pctx, node.js, pc, log) }()
	defer func() { stopPipe(); <-perr }()
	waitFor(t, 60*time.Second, "healthy", func() bool { c, _ := health(); return c == 200 })

	var bctx context.Context
	if chromium != "" {
		bctx = openBrowser(t, ctx, chromium, base)
		watchThumbnails(t, bctx)
	}

	// A replay while the page watches.
	type result struct {
		rep *replay.Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := replay.Run(ctx, node.js, replay.Options{Inputs: []string{in}, Models: []string{"tiny", "tiny-low"}, Timeout: 2 * time.Minute}, log)
		done <- result{r, err}
	}()
	if chromium != "" {
		midReplayShot(t, bctx, done)
	}
	res := <-done
	rep, err := res.rep, res.err
	if err != nil {
		t.Fatal(err)
	}
	if rep.Ingested != n || len(rep.Slices) != 2*n {
		t.Fatalf("replay: %d slices, %d results", rep.Ingested, len(rep.Slices))
	}

	if chromium != "" {
		checkPage(t, bctx, base, rep, truth, n)
	}

	// /metrics moved with the replay, by exactly the work done. The
	// consumer gauges come from a poll every 2 s that reads the streams one
	// after another, so one scrape can hold READY from before the last slice
	// was segmented and MASKS from after it was scored: wait until every
	// gauge checked below has caught up (or fail after 10 s).
	var after map[string]float64
	waitFor(t, 10*time.Second, "consumers drained", func() bool {
		after = scrape(t, base+"/metrics")
		return after[`lungseg_consumer_pending_messages{consumer="score",stream="MASKS"}`] == 0 &&
			after[`lungseg_consumer_ack_pending_messages{consumer="score",stream="MASKS"}`] == 0 &&
			after[`lungseg_stage_messages_acked_total{stage="score"}`] == 2*n &&
			after[`lungseg_consumer_pending_messages{consumer="segment-tiny-low",stream="READY"}`] == 0 &&
			after[`lungseg_consumer_waiting_pulls{consumer="segment-tiny",stream="READY"}`] >= 1
	})
	for series, v := range map[string]float64{
		`lungseg_stage_messages_received_total{stage="ingest"}`:                         1,
		`lungseg_stage_messages_acked_total{stage="ingest"}`:                            1,
		`lungseg_stage_messages_received_total{stage="preprocess"}`:                     n,
		`lungseg_stage_messages_acked_total{stage="preprocess"}`:                        n,
		`lungseg_stage_messages_received_total{stage="segment"}`:                        2 * n,
		`lungseg_stage_messages_received_total{stage="score"}`:                          2 * n,
		`lungseg_stage_messages_published_total{stage="score"}`:                         2 * n,
		`lungseg_stage_processing_seconds_count{stage="segment"}`:                       2 * n,
		`lungseg_model_inference_seconds_count{model="tiny",provider="cpu"}`:            n,
		`lungseg_model_inference_seconds_count{model="tiny-low",provider="cpu"}`:        n,
		`lungseg_score_dice_count{model="tiny"}`:                                        n,
		`lungseg_consumer_pending_messages{consumer="preprocess",stream="RAW"}`:         0,
		`lungseg_consumer_waiting_pulls{consumer="segment-tiny",stream="READY"}`:        -1, // present, checked below
		`lungseg_consumer_pending_messages{consumer="segment-tiny-low",stream="READY"}`: 0,
	} {
		got, ok := after[series]
		switch {
		case !ok:
			t.Errorf("%s missing from /metrics", series)
		case v >= 0 && got != v:
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
	if after[`lungseg_consumer_waiting_pulls{consumer="segment-tiny",stream="READY"}`] < 1 {
		t.Error("segment-tiny has no waiting pull although its worker runs")
	}
	if s := after[`lungseg_model_inference_seconds_sum{model="tiny",provider="cpu"}`]; s <= 0 || math.IsNaN(s) {
		t.Errorf("inference time sum %v", s)
	}
}

// openBrowser starts headless Chromium on the viewer's page and waits
// until the page is connected to the event stream.
func openBrowser(t *testing.T, ctx context.Context, chromium, base string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("force-device-scale-factor", "1"),
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1100),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(cancelBrowser)
	step := func(what string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		if _, err := chromedp.Run(bctx, a); err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
	}
	step("navigate", chromedp.Navigate(base+"/"))
	step("connect", chromedp.Poll[chromedp.Void](`document.body.dataset.connected === '1'`, chromedp.WithPollingTimeout(30*time.Second)))

	return bctx
}

// checkPage checks what the page shows after the replay and keeps the
// screenshots.
func checkPage(t *testing.T, bctx context.Context, base string, rep *replay.Report, truth map[string]phantom.Slice, n int) {
	t.Helper()
	step := func(what string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		if _, err := chromedp.Run(bctx, a); err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
	}
	// Every slice has a card with both models' scores and a loaded image,
	// and the metrics panel has both models.
	step("cards", chromedp.Poll[chromedp.Void](fmt.Sprintf(`(() => {
		const cards = document.querySelectorAll('.card[data-models="2"]');
		const imgs = [...document.querySelectorAll('.card img')];
		return cards.length === %d && imgs.length === %d && imgs.every((i) => i.complete && i.naturalWidth === 256) &&
			document.querySelectorAll('#metrics tbody tr').length === 2;
	})()`, n, n), chromedp.WithPollingTimeout(60*time.Second)))

	// The numbers shown are the replay's.
	type row struct{ Model, Dice string }
	rows, err := chromedp.Run(bctx, chromedp.Evaluate[[]row](`[...document.querySelectorAll('#metrics tbody tr')].map((r) => ({Model: r.dataset.model, Dice: r.querySelector('.dice').textContent}))`))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		// the mean over slices with truth pixels, as the CLI table
		want := 0.0
		k := 0
		for _, s := range rep.Slices {
			if s.Model == r.Model && s.HasTruth && s.Truth > 0 {
				want += s.Dice
				k++
			}
		}
		if k == 0 || r.Dice != fmt.Sprintf("%.3f", want/float64(k)) {
			t.Errorf("metrics panel: %s Dice %s, replay %.3f over %d slices", r.Model, r.Dice, want/float64(k), k)
		}
	}

	// No thumbnail went blank while the replay streamed.
	blank, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](`window.__blankThumbs`))
	if err != nil {
		t.Fatal(err)
	}
	if len(blank) > 0 {
		t.Errorf("thumbnails went blank during the replay %d times (first: %s)", len(blank), blank[0])
	}

	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	art := artifactsDir(t)
	shotPath := filepath.Join(art, "viewer.png")
	if err := os.WriteFile(shotPath, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shotPath)

	// Pixels of the screenshot inside the slice images: the truth's green
	// and each model's outline colour must be there.
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatal(err)
	}
	rects, err := chromedp.Run(bctx, chromedp.Evaluate[[]screenRect](`[...document.querySelectorAll('.card img')].map((i) => { const r = i.getBoundingClientRect(); return {X: r.x + scrollX, Y: r.y + scrollY, W: r.width, H: r.height}; })`))
	if err != nil {
		t.Fatal(err)
	}
	colors, err := chromedp.Run(bctx, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll('#legend li[data-model]')].map((l) => [l.dataset.model, getComputedStyle(l.querySelector('.swatch')).backgroundColor]))`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]color.RGBA{"truth": overlay.TruthColor}
	for m, css := range colors {
		var r, g, b uint8
		if _, err := fmt.Sscanf(css, "rgb(%d, %d, %d)", &r, &g, &b); err != nil {
			t.Fatalf("legend colour %q of %s: %v", css, m, err)
		}
		want[m] = color.RGBA{r, g, b, 255}
	}
	if len(want) != 3 {
		t.Fatalf("legend colours %v, want two models", colors)
	}
	counts := countColors(img, rects, want)
	t.Logf("outline pixels in the screenshot's slice images: %v", counts)
	for name := range want {
		if counts[name] < 50 {
			t.Errorf("only %d %s outline pixels in the screenshot's slice images", counts[name], name)
		}
	}

	// Open a slice large and read the HU under the cursor.
	key, err := chromedp.Run(bctx, chromedp.Evaluate[string](`(() => { const c = document.querySelector('.card'); c.click(); return c.dataset.key; })()`))
	if err != nil {
		t.Fatal(err)
	}
	step("large view", chromedp.Poll[chromedp.Void](`!document.getElementById('modal').hidden && document.getElementById('big').complete && document.getElementById('big').naturalWidth === 768`, chromedp.WithPollingTimeout(20*time.Second)))
	box, err := chromedp.Run(bctx, chromedp.Evaluate[screenRect](`(() => { const r = document.getElementById('big').getBoundingClientRect(); return {X: r.x, Y: r.y, W: r.width, H: r.height}; })()`))
	if err != nil {
		t.Fatal(err)
	}
	// Hover the centre of pixel (row 70, col 40) of the 128×128 slice.
	const pr, pcol = 70, 40
	x := box.X + (pcol+0.5)*box.W/128
	y := box.Y + (pr+0.5)*box.H/128
	var huText string
	waitFor(t, 20*time.Second, "HU read-out", func() bool {
		if _, err := chromedp.Run(bctx, chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, x, y)); err != nil {
			t.Fatal(err)
		}
		huText, err = chromedp.Run(bctx, chromedp.Evaluate[string](`document.getElementById('hu').textContent`))
		if err != nil {
			t.Fatal(err)
		}
		return strings.HasPrefix(huText, "HU ")
	})
	m := regexp.MustCompile(`^HU (-?\d+) at row (\d+), col (\d+)$`).FindStringSubmatch(huText)
	if m == nil {
		t.Fatalf("HU read-out %q", huText)
	}
	id := key[strings.IndexByte(key, '|')+1:]
	s, ok := truth[id]
	if !ok {
		t.Fatalf("card %q is not a phantom slice", key)
	}
	if m[2] != strconv.Itoa(pr) || m[3] != strconv.Itoa(pcol) || m[1] != strconv.Itoa(int(s.HU.At(pr, pcol))) {
		t.Errorf("read-out %q, want HU %d at row %d, col %d", huText, s.HU.At(pr, pcol), pr, pcol)
	}
	big, err := chromedp.Run(bctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(art, "viewer-large.png"), big, 0o644); err != nil {
		t.Fatal(err)
	}

}

// watchThumbnails makes the page record, every few milliseconds, each card
// whose thumbnail had been shown and is not drawn now (an img not yet
// loaded replacing a loaded one), in window.__blankThumbs.
func watchThumbnails(t *testing.T, bctx context.Context) {
	t.Helper()
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`(() => {
		window.__blankThumbs = [];
		const shown = new Set();
		setInterval(() => {
			for (const c of document.querySelectorAll('.card')) {
				const i = c.querySelector('img.thumb');
				const drawn = i && i.naturalWidth > 0; // the current image, also while a new src is pending
				if (drawn) shown.add(c.dataset.key);
				else if (shown.has(c.dataset.key)) window.__blankThumbs.push(c.dataset.key + ' at ' + performance.now().toFixed(0) + ' ms' +
					(i ? (i.__watched ? ' (same img, src ' + i.getAttribute('src') + ')' : ' (a new img)') : ' (no img)'));
				if (i) i.__watched = true;
			}
		}, 5);
		return true;
	})()`)); err != nil {
		t.Fatalf("browser: thumbnail watch: %v", err)
	}
}

// midReplayShot keeps a screenshot of the page while the replay streams:
// as soon as a card shows a scored slice, unless the replay has already
// ended (then the later screenshot stands for it).
func midReplayShot[T any](t *testing.T, bctx context.Context, done chan T) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case r := <-done:
			done <- r
			t.Log("the replay ended before a card showed a score: no mid-replay screenshot")
			return
		default:
		}
		n, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll('.card[data-models]:not([data-models="0"]) img.thumb').length`))
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(90))
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(artifactsDir(t), "viewer-mid-replay.png")
			if err := os.WriteFile(p, shot, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("mid-replay screenshot: %s", p)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// screenRect is an element's box in page pixels.
type screenRect struct{ X, Y, W, H float64 }

// countColors counts, inside the rectangles, the pixels within 3 levels of
// each wanted colour.
func countColors(img image.Image, rects []screenRect, want map[string]color.RGBA) map[string]int {
	out := map[string]int{}
	near := func(a, b uint8) bool { d := int(a) - int(b); return d >= -3 && d <= 3 }
	for _, r := range rects {
		for y := int(r.Y); y < int(r.Y+r.H); y++ {
			for x := int(r.X); x < int(r.X+r.W); x++ {
				c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
				for name, w := range want {
					if near(c.R, w.R) && near(c.G, w.G) && near(c.B, w.B) {
						out[name]++
					}
				}
			}
		}
	}
	return out
}

// waitFor polls cond every 50 ms until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
