package web

import (
	"container/list"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/overlay"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
)

// Alert thresholds.
const (
	// LowDice marks a slice with truth whose Dice falls below it.
	LowDice = 0.5
)

// entry is one slice of one replay as the viewer holds it.
type entry struct {
	key       string
	meta      *lungsegv1.SliceMeta
	hu        []byte // little-endian int16, nil until the raw slice arrives
	truth     []byte // packed bits, nil without ground truth
	preds     map[string][]byte
	scores    map[string]ModelScore
	version   int
	updatedAt time.Time
}

// ModelScore is one model's result on one slice, as sent to the page.
type ModelScore struct {
	Model       string    `json:"model"`
	Color       string    `json:"color"`
	HasTruth    bool      `json:"has_truth"`
	Dice        float64   `json:"dice"`
	IoU         float64   `json:"iou"`
	RMSE        float64   `json:"rmse"`
	Predicted   int64     `json:"predicted_pixels"`
	InferenceMs float64   `json:"inference_ms"`
	Findings    []Finding `json:"findings,omitempty"`
}

// Finding is one predicted region: a candidate nodule.
type Finding struct {
	Pixels     int     `json:"pixels"`
	DiameterMm float64 `json:"diameter_mm"`
	// Category is the Lung-RADS size category of a solid nodule of that
	// diameter.
	Category string  `json:"category"`
	Row      float64 `json:"row"`
	Col      float64 `json:"col"`
}

// SliceView is a slice as sent to the page.
type SliceView struct {
	Key      string       `json:"key"`
	ID       string       `json:"id"`
	Replay   string       `json:"replay"`
	Label    string       `json:"label,omitempty"`
	Source   string       `json:"source,omitempty"`
	Rows     int32        `json:"rows"`
	Cols     int32        `json:"cols"`
	RowMm    float64      `json:"row_mm"`
	ColMm    float64      `json:"col_mm"`
	HasCT    bool         `json:"has_ct"`
	HasTruth bool         `json:"has_truth"`
	Truth    int          `json:"truth_pixels"`
	Version  int          `json:"version"`
	Scores   []ModelScore `json:"scores"`
}

// ModelStats are a model's running scores on one replay, as the CLI table
// gives them: Dice and IoU averaged over the slices whose truth has nodule
// pixels first, pooled Dice second, and the slices with an empty truth
// counted apart (clean when the prediction is empty too, FP otherwise).
type ModelStats struct {
	Model  string `json:"model"`
	Color  string `json:"color"`
	Slices int    `json:"slices"`
	// Scored slices have a ground truth (empty or not).
	Scored int `json:"scored"`
	// WithTruth slices have truth pixels; MeanDice and MeanIoU average
	// over them.
	WithTruth  int     `json:"with_truth"`
	MeanDice   float64 `json:"mean_dice"`
	MeanIoU    float64 `json:"mean_iou"`
	PooledDice float64 `json:"pooled_dice"`
	EmptyClean int     `json:"empty_clean"`
	EmptyFP    int     `json:"empty_fp"`
	// RMSE averages over every scored slice.
	RMSE        float64 `json:"rmse"`
	InferenceMs float64 `json:"inference_ms"`
}

// Stats are the running scores of one replay.
type Stats struct {
	Replay string       `json:"replay"`
	Models []ModelStats `json:"models"`
	Errors int          `json:"errors"`
}

// Alert is an error event or a notable score.
type Alert struct {
	Time   time.Time `json:"time"`
	Level  string    `json:"level"` // "error", "warn" or "info"
	Kind   string    `json:"kind"`
	Replay string    `json:"replay"`
	ID     string    `json:"id"`
	Model  string    `json:"model,omitempty"`
	Text   string    `json:"text"`
}

type acc struct {
	slices, scored, withTruth, emptyClean, emptyFP int
	dice, iou, rmse, t                             float64
	// pooled Dice: 2·Σ intersection / Σ (predicted + truth)
	inter, sizes float64
}

type replayStats struct {
	models map[string]*acc
	errors int
	last   time.Time
}

// event is one server-sent event, encoded once for every client.
type event struct {
	name string
	data []byte
}

// hub holds the viewer's state and fans events out to clients.
type hub struct {
	mu       sync.Mutex
	capacity int
	lru      *list.List // of *entry, most recent first
	byKey    map[string]*list.Element
	colors   map[string]string
	order    []string // models in order of first appearance
	replays  map[string]*replayStats
	alerts   []Alert
	maxAlert int
	clients  map[chan event]struct{}
	now      func() time.Time
}

func newHub(capacity, maxAlerts int) *hub {
	return &hub{
		capacity: capacity,
		lru:      list.New(),
		byKey:    map[string]*list.Element{},
		colors:   map[string]string{},
		replays:  map[string]*replayStats{},
		maxAlert: maxAlerts,
		clients:  map[chan event]struct{}{},
		now:      time.Now,
	}
}

// Key names a slice of a replay.
func Key(replay, id string) string {
	if replay == "" {
		replay = bus.LiveReplay
	}
	return replay + "|" + id
}

// colorLocked returns a model's colour (overlay.ColorOf: by name, the same
// in every run and in the report) and records the model's first sight.
func (h *hub) colorLocked(model string) string {
	if c, ok := h.colors[model]; ok {
		return c
	}
	c := overlay.Hex(overlay.ColorOf(model))
	h.colors[model] = c
	h.order = append(h.order, model)
	return c
}

// getLocked returns the entry of key, creating it (and evicting the
// least recent) as needed, and marks it most recent.
func (h *hub) getLocked(key string, meta *lungsegv1.SliceMeta) *entry {
	if el, ok := h.byKey[key]; ok {
		h.lru.MoveToFront(el)
		e := el.Value.(*entry)
		if e.meta == nil || (e.hu == nil && meta != nil) {
			e.meta = meta
		}
		return e
	}
	e := &entry{key: key, meta: meta, preds: map[string][]byte{}, scores: map[string]ModelScore{}}
	h.byKey[key] = h.lru.PushFront(e)
	for h.lru.Len() > h.capacity {
		old := h.lru.Back()
		h.lru.Remove(old)
		delete(h.byKey, old.Value.(*entry).key)
	}
	return e
}

func (h *hub) statsLocked(replay string) *replayStats {
	rs, ok := h.replays[replay]
	if !ok {
		rs = &replayStats{models: map[string]*acc{}}
		h.replays[replay] = rs
		// Keep the ten most recent replays.
		if len(h.replays) > 10 {
			var oldest string
			var t time.Time
			for k, v := range h.replays {
				if k != replay && (oldest == "" || v.last.Before(t)) {
					oldest, t = k, v.last
				}
			}
			delete(h.replays, oldest)
		}
	}
	rs.last = h.now()
	return rs
}

// addSlice records a raw slice.
func (h *hub) addSlice(s *lungsegv1.Slice) error {
	m := s.GetMeta()
	if m == nil {
		return fmt.Errorf("web: slice without metadata")
	}
	if err := imgx.CheckSize(int(m.Rows), int(m.Cols)); err != nil {
		return fmt.Errorf("web: slice %s: %w", m.Id, err)
	}
	if len(s.Hu) != 2*int(m.Rows)*int(m.Cols) {
		return fmt.Errorf("web: slice %s: %w: %d HU bytes for %d×%d", m.Id, imgx.ErrShape, len(s.Hu), m.Rows, m.Cols)
	}
	if s.HasMask && len(s.MaskBits) != (int(m.Rows)*int(m.Cols)+7)/8 {
		return fmt.Errorf("web: slice %s: %w: %d mask bytes", m.Id, imgx.ErrShape, len(s.MaskBits))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.getLocked(Key(m.ReplayId, m.Id), m)
	e.meta, e.hu = m, s.Hu
	if s.HasMask {
		e.truth = s.MaskBits
	}
	h.touchLocked(e)
	return nil
}

// addScore records a model's score of a slice and updates the running
// statistics and alerts.
func (h *hub) addScore(s *lungsegv1.Score) error {
	m := s.GetMeta()
	if m == nil {
		return fmt.Errorf("web: score without metadata")
	}
	rows, cols := int(m.Rows), int(m.Cols)
	pred, err := imgx.UnpackMask(rows, cols, s.PredBits)
	if err != nil {
		return fmt.Errorf("web: score of %s by %s: %w", m.Id, s.Model, err)
	}
	var findings []Finding
	rowMm, colMm := m.SpacingRowMm, m.SpacingColMm
	if rowMm <= 0 || colMm <= 0 {
		rowMm, colMm = 1, 1
	}
	for i, r := range overlay.Regions(pred) {
		if i == 5 {
			break
		}
		d := r.DiameterMm(rowMm, colMm)
		findings = append(findings, Finding{Pixels: r.Pixels, DiameterMm: d, Category: phantom.LungRADS(d), Row: r.Row, Col: r.Col})
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.getLocked(Key(m.ReplayId, m.Id), m)
	col := h.colorLocked(s.Model)
	ms := ModelScore{Model: s.Model, Color: col, HasTruth: s.HasTruth, Dice: s.Dice, IoU: s.Iou, RMSE: s.Rmse,
		Predicted: s.PredictedPixels, InferenceMs: float64(s.InferenceUs) / 1e3, Findings: findings}
	_, dup := e.scores[s.Model]
	e.scores[s.Model] = ms
	e.preds[s.Model] = s.PredBits
	h.touchLocked(e)
	if dup {
		return nil
	}
	rs := h.statsLocked(m.ReplayId)
	a := rs.models[s.Model]
	if a == nil {
		a = &acc{}
		rs.models[s.Model] = a
	}
	a.slices++
	a.t += ms.InferenceMs
	if s.HasTruth {
		a.scored++
		a.rmse += s.Rmse
		size := float64(s.PredictedPixels + s.TruthPixels)
		a.sizes += size
		a.inter += s.Dice * size / 2 // Dice = 2·|P∩T| / (|P|+|T|)
		switch {
		case s.TruthPixels > 0:
			a.withTruth++
			a.dice += s.Dice
			a.iou += s.Iou
		case s.PredictedPixels == 0:
			a.emptyClean++
		default:
			a.emptyFP++
		}
		switch {
		case s.TruthPixels > 0 && s.PredictedPixels == 0:
			h.alertLocked(Alert{Level: "warn", Kind: "missed", Replay: m.ReplayId, ID: m.Id, Model: s.Model,
				Text: fmt.Sprintf("%s missed the nodule on %s (%d truth pixels)", s.Model, m.Id, s.TruthPixels)})
		case s.TruthPixels == 0 && s.PredictedPixels > 0:
			h.alertLocked(Alert{Level: "warn", Kind: "false-positive", Replay: m.ReplayId, ID: m.Id, Model: s.Model,
				Text: fmt.Sprintf("%s marks %d pixels on %s, which has no nodule", s.Model, s.PredictedPixels, m.Id)})
		case s.TruthPixels > 0 && s.Dice < LowDice:
			h.alertLocked(Alert{Level: "warn", Kind: "low-dice", Replay: m.ReplayId, ID: m.Id, Model: s.Model,
				Text: fmt.Sprintf("%s Dice %.2f on %s", s.Model, s.Dice, m.Id)})
		}
	}
	for _, f := range findings {
		if f.DiameterMm >= 8 {
			h.alertLocked(Alert{Level: "info", Kind: "finding", Replay: m.ReplayId, ID: m.Id, Model: s.Model,
				Text: fmt.Sprintf("%s finds a %.1f mm region (%s) on %s", s.Model, f.DiameterMm, f.Category, m.Id)})
			break
		}
	}
	h.broadcastLocked("stats", h.statsViewLocked(m.ReplayId))
	return nil
}

// addFinding records a nodule finding of the findings stage.
func (h *hub) addFinding(f *lungsegv1.Finding) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id := f.SeriesUid
	if len(f.SliceIds) > 0 {
		id = f.SliceIds[0]
	}
	h.alertLocked(Alert{Level: "info", Kind: "nodule", Replay: f.ReplayId, ID: id, Model: f.Model,
		Text: fmt.Sprintf("%s: %s", f.Model, findings.Summary(f))})
}

// addNoduleAlert records an alert of the findings stage.
func (h *hub) addNoduleAlert(a *lungsegv1.Alert) {
	f := a.GetFinding()
	if f == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	id := f.SeriesUid
	if len(f.SliceIds) > 0 {
		id = f.SliceIds[0]
	}
	h.alertLocked(Alert{Level: "error", Kind: "alert", Replay: f.ReplayId, ID: id, Model: f.Model,
		Text: fmt.Sprintf("ALERT (≥ %s) %s: %s", a.Threshold, f.Model, a.Summary)})
}

// addError records a stage's failure report.
func (h *hub) addError(ev *lungsegv1.ErrorEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	rs := h.statsLocked(ev.ReplayId)
	rs.errors++
	text := ev.Error
	if len(text) > 300 {
		text = text[:300] + "…"
	}
	h.alertLocked(Alert{Level: "error", Kind: "error:" + ev.Stage, Replay: ev.ReplayId, ID: ev.Id, Model: ev.Model,
		Text: fmt.Sprintf("%s failed on %s: %s", ev.Stage, ev.Id, text)})
	h.broadcastLocked("stats", h.statsViewLocked(ev.ReplayId))
}

func (h *hub) alertLocked(a Alert) {
	if a.Time.IsZero() {
		a.Time = h.now()
	}
	h.alerts = append(h.alerts, a)
	if len(h.alerts) > h.maxAlert {
		h.alerts = append([]Alert(nil), h.alerts[len(h.alerts)-h.maxAlert:]...)
	}
	h.broadcastLocked("alert", a)
}

// touchLocked bumps an entry's version and sends it to the clients.
func (h *hub) touchLocked(e *entry) {
	e.version++
	e.updatedAt = h.now()
	h.broadcastLocked("slice", h.viewLocked(e))
}

func (h *hub) viewLocked(e *entry) SliceView {
	m := e.meta
	v := SliceView{Key: e.key, ID: m.GetId(), Replay: m.GetReplayId(), Label: m.GetLabel(), Source: m.GetSource(),
		Rows: m.GetRows(), Cols: m.GetCols(), RowMm: m.GetSpacingRowMm(), ColMm: m.GetSpacingColMm(),
		HasCT: e.hu != nil, HasTruth: e.truth != nil, Version: e.version}
	if v.Replay == "" {
		v.Replay = bus.LiveReplay
	}
	for _, b := range e.truth {
		v.Truth += popcount(b)
	}
	for _, name := range h.order {
		if s, ok := e.scores[name]; ok {
			v.Scores = append(v.Scores, s)
		}
	}
	return v
}

func popcount(b byte) int {
	n := 0
	for ; b != 0; b &= b - 1 {
		n++
	}
	return n
}

func (h *hub) statsViewLocked(replay string) Stats {
	if replay == "" {
		replay = bus.LiveReplay
	}
	st := Stats{Replay: replay}
	rs := h.replays[replay]
	if rs == nil {
		return st
	}
	st.Errors = rs.errors
	for _, name := range h.order {
		a := rs.models[name]
		if a == nil {
			continue
		}
		ms := ModelStats{Model: name, Color: h.colors[name], Slices: a.slices, Scored: a.scored, WithTruth: a.withTruth,
			EmptyClean: a.emptyClean, EmptyFP: a.emptyFP, InferenceMs: a.t / float64(a.slices)}
		if a.withTruth > 0 {
			n := float64(a.withTruth)
			ms.MeanDice, ms.MeanIoU = a.dice/n, a.iou/n
		}
		if a.scored > 0 {
			ms.RMSE = a.rmse / float64(a.scored)
		}
		if a.sizes > 0 {
			ms.PooledDice = 2 * a.inter / a.sizes
		}
		st.Models = append(st.Models, ms)
	}
	return st
}

func (h *hub) broadcastLocked(name string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	ev := event{name: name, data: b}
	for c := range h.clients {
		select {
		case c <- ev:
		default:
			// A client that cannot keep up is dropped; its page
			// reconnects and gets a fresh snapshot.
			delete(h.clients, c)
			close(c)
		}
	}
}

// Snapshot is the state a new page starts from.
type Snapshot struct {
	Models []ModelColor `json:"models"`
	Slices []SliceView  `json:"slices"` // most recent first
	Stats  []Stats      `json:"stats"`  // most recent replay first
	Alerts []Alert      `json:"alerts"` // oldest first
	Truth  string       `json:"truth_color"`
}

// ModelColor is a model's outline colour.
type ModelColor struct {
	Model string `json:"model"`
	Color string `json:"color"`
}

func (h *hub) snapshotLocked(maxSlices int) Snapshot {
	s := Snapshot{Truth: overlay.Hex(overlay.TruthColor), Alerts: append([]Alert(nil), h.alerts...)}
	for _, m := range h.order {
		s.Models = append(s.Models, ModelColor{m, h.colors[m]})
	}
	for el := h.lru.Front(); el != nil && len(s.Slices) < maxSlices; el = el.Next() {
		s.Slices = append(s.Slices, h.viewLocked(el.Value.(*entry)))
	}
	var rids []string
	for r := range h.replays {
		rids = append(rids, r)
	}
	sort.Slice(rids, func(i, j int) bool { return h.replays[rids[i]].last.After(h.replays[rids[j]].last) })
	for _, r := range rids {
		s.Stats = append(s.Stats, h.statsViewLocked(r))
	}
	return s
}

// subscribe registers a client and returns its channel with the snapshot
// taken at the same instant, so no event falls between the two.
func (h *hub) subscribe(buf, maxSlices int) (chan event, Snapshot) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := make(chan event, buf)
	h.clients[c] = struct{}{}
	return c, h.snapshotLocked(maxSlices)
}

func (h *hub) unsubscribe(c chan event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[c]; ok {
		delete(h.clients, c)
		close(c)
	}
}

// pixels returns copies of what rendering a slice needs.
type pixels struct {
	hu     *imgx.HU
	truth  *imgx.Mask
	preds  []overlay.Layer
	meta   *lungsegv1.SliceMeta
	models []string
}

// ErrNoSlice means the slice is unknown or no longer cached.
var ErrNoSlice = fmt.Errorf("web: slice not in the cache")

// ErrNoCT means the slice's scores arrived but not (yet) its CT pixels.
var ErrNoCT = fmt.Errorf("web: slice has no CT pixels yet")

func (h *hub) pixels(key string, only map[string]bool) (*pixels, error) {
	h.mu.Lock()
	el, ok := h.byKey[key]
	if !ok {
		h.mu.Unlock()
		return nil, ErrNoSlice
	}
	e := el.Value.(*entry)
	huB, truthB, meta := e.hu, e.truth, e.meta
	type pb struct {
		name, color string
		bits        []byte
	}
	var preds []pb
	for _, name := range h.order {
		if b, ok := e.preds[name]; ok && (only == nil || only[name]) {
			preds = append(preds, pb{name, h.colors[name], b})
		}
	}
	h.mu.Unlock()
	if huB == nil {
		return nil, ErrNoCT
	}
	rows, cols := int(meta.Rows), int(meta.Cols)
	hu, err := imgx.DecodeHU(rows, cols, huB)
	if err != nil {
		return nil, err
	}
	p := &pixels{hu: hu, meta: meta}
	if truthB != nil && (only == nil || only[truthLayer]) {
		if p.truth, err = imgx.UnpackMask(rows, cols, truthB); err != nil {
			return nil, err
		}
	}
	for _, q := range preds {
		m, err := imgx.UnpackMask(rows, cols, q.bits)
		if err != nil {
			return nil, err
		}
		p.preds = append(p.preds, overlay.Layer{Mask: m, Color: parseHex(q.color)})
		p.models = append(p.models, q.name)
	}
	return p, nil
}

// truthLayer names the ground-truth layer in a layers= list.
const truthLayer = "truth"

func parseLayers(s string) map[string]bool {
	if s == "" {
		return nil
	}
	out := map[string]bool{}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out[p] = true
		}
	}
	return out
}
