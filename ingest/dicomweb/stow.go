package dicomweb

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lungseg/lungseg/ingest/dicomio"
)

// Server limits (defaults of the Server fields).
const (
	// DefaultMaxInstanceBytes bounds one part of a request.
	DefaultMaxInstanceBytes = 256 << 20
	// DefaultMaxRequestBytes bounds a whole request body.
	DefaultMaxRequestBytes = 2 << 30
	// DefaultMaxParts bounds the parts of one request.
	DefaultMaxParts = 5000
	// DefaultMaxConcurrent bounds the requests decoded at once (each
	// holds at most one instance in memory). A request takes a slot only
	// once the first bytes of its body have arrived.
	DefaultMaxConcurrent = 4
	// DefaultIdleTimeout is the longest wait for the next bytes of a
	// request body.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultMinBytesPerSecond is the slowest average rate a body may
	// arrive at once DefaultRateGrace has passed.
	DefaultMinBytesPerSecond = 16 << 10
	// DefaultRateGrace is how long a body may take before the minimum
	// rate applies.
	DefaultRateGrace = 10 * time.Second
	// DefaultSlotWait is the longest a request waits for a slot before
	// it is answered 503 with Retry-After.
	DefaultSlotWait = 30 * time.Second
	// maxWarnings bounds the Warning headers of one response.
	maxWarnings = 20
)

// MediaTypeDICOM is the part type STOW-RS requests must carry.
const MediaTypeDICOM = "application/dicom"

// MediaTypeDICOMJSON is the response body's type.
const MediaTypeDICOMJSON = "application/dicom+json"

// Server is the STOW-RS endpoint: POST /studies and POST /studies/{uid}
// (under an optional prefix) with a multipart/related;
// type="application/dicom" body. Each part is handed to the Acceptor; the
// answer, once every part is stored or rejected, is the standard response
// (PS3.18 §10.5.3): 200 when all were stored, 202 when some were, 409 when
// none were, 400 for a malformed request, 415 for another media type; the
// body is the application/dicom+json store instance response with the
// ReferencedSOPSequence and FailedSOPSequence (FailureReason per
// instance), and one Warning header per failure gives its cause in words.
type Server struct {
	Acceptor *Acceptor
	// Prefix is the path before /studies, e.g. "/dicomweb" ("" for none).
	Prefix string
	// Limits; zero takes the defaults above.
	MaxInstanceBytes int64
	MaxRequestBytes  int64
	MaxParts         int
	MaxConcurrent    int
	// Slow clients: IdleTimeout bounds the wait for the next body bytes,
	// MinBytesPerSecond the average rate after RateGrace (a body of n
	// bytes must be in within RateGrace + n/MinBytesPerSecond), SlotWait
	// the wait for a slot. A request that breaks them is answered 408
	// (or 503) and its slot freed; zero takes the defaults above.
	IdleTimeout       time.Duration
	MinBytesPerSecond int64
	RateGrace         time.Duration
	SlotWait          time.Duration

	once sync.Once
	sem  chan struct{}
}

// NewServer returns a Server with the default limits.
func NewServer(a *Acceptor, prefix string) *Server {
	return &Server{Acceptor: a, Prefix: strings.TrimSuffix(prefix, "/")}
}

func (s *Server) limits() (inst, req int64, parts int) {
	inst, req, parts = s.MaxInstanceBytes, s.MaxRequestBytes, s.MaxParts
	if inst <= 0 {
		inst = DefaultMaxInstanceBytes
	}
	if inst > dicomio.MaxFileBytes {
		inst = dicomio.MaxFileBytes
	}
	if req <= 0 {
		req = DefaultMaxRequestBytes
	}
	if parts <= 0 {
		parts = DefaultMaxParts
	}
	return
}

// Register adds the endpoint to mux.
func (s *Server) Register(mux *http.ServeMux) {
	mux.Handle("POST "+s.Prefix+"/studies", s)
	mux.Handle("POST "+s.Prefix+"/studies/{study}", s)
}

// SOPRef is one instance of a store response.
type SOPRef struct {
	SOPClassUID, SOPInstanceUID string
	// FailureReason is 0 for stored instances.
	FailureReason uint16
	// Cause is the failure in words (not part of the DICOM response; sent
	// as a Warning header).
	Cause string `json:"-"`
}

// Response is the outcome of one STOW-RS request.
type Response struct {
	Stored, Failed []SOPRef
	// Status is the HTTP status.
	Status int
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	study := r.PathValue("study")
	if study != "" && !validUID(study) {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("study %q is not a valid UID", study))
		return
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/related" {
		httpError(w, http.StatusUnsupportedMediaType, `want Content-Type multipart/related; type="application/dicom"`)
		return
	}
	if t := params["type"]; !strings.EqualFold(t, MediaTypeDICOM) {
		httpError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("multipart/related type %q is not supported; send type=\"application/dicom\" (Part 10 instances)", t))
		return
	}
	if params["boundary"] == "" {
		httpError(w, http.StatusBadRequest, "multipart/related without a boundary")
		return
	}
	// The body is read under an idle timeout and a minimum rate, and a
	// slot is taken only once its first bytes are in: a client that
	// announces a body and sends nothing, or sends it a byte at a time,
	// cannot keep the others waiting.
	sr := s.slowReader(w, r.Body)
	br := bufio.NewReaderSize(sr, 32<<10)
	if _, err := br.Peek(1); err != nil && !errors.Is(err, io.EOF) {
		slowError(w, err)
		return
	}
	if err := s.acquire(r.Context()); err != nil {
		w.Header().Set("Retry-After", "5")
		httpError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer s.release()
	inst, req, maxParts := s.limits()
	body := http.MaxBytesReader(w, io.NopCloser(br), req)
	resp, err := s.store(r.Context(), multipart.NewReader(body, params["boundary"]), study, inst, maxParts)
	if errors.Is(err, ErrSlowClient) {
		slowError(w, err)
		return
	}
	writeResponse(w, resp, err)
}

// ErrSlowClient reports a request body that stalled longer than the idle
// timeout or arrived under the minimum rate.
var ErrSlowClient = errors.New("dicomweb: request body too slow")

func slowError(w http.ResponseWriter, err error) {
	w.Header().Set("Connection", "close")
	httpError(w, http.StatusRequestTimeout, err.Error())
}

func (s *Server) slowLimits() (idle time.Duration, rate int64, grace time.Duration) {
	idle, rate, grace = s.IdleTimeout, s.MinBytesPerSecond, s.RateGrace
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	if rate <= 0 {
		rate = DefaultMinBytesPerSecond
	}
	if grace <= 0 {
		grace = DefaultRateGrace
	}
	return
}

// slowReader wraps a request body: before each read it sets the
// connection's read deadline to the earlier of the idle timeout and the
// moment the body would fall under the minimum rate.
func (s *Server) slowReader(w http.ResponseWriter, body io.Reader) *slowReader {
	idle, rate, grace := s.slowLimits()
	return &slowReader{r: body, rc: http.NewResponseController(w), idle: idle, rate: rate, grace: grace, start: time.Now()}
}

type slowReader struct {
	r           io.Reader
	rc          *http.ResponseController
	idle, grace time.Duration
	rate        int64
	start       time.Time
	n           int64
}

func (sr *slowReader) due() time.Time {
	return sr.start.Add(sr.grace + time.Duration(float64(sr.n)/float64(sr.rate)*float64(time.Second)))
}

func (sr *slowReader) Read(p []byte) (int, error) {
	now := time.Now()
	due := sr.due()
	if !now.Before(due) {
		return 0, fmt.Errorf("%w: %d bytes in %v, under %d bytes/s", ErrSlowClient, sr.n, now.Sub(sr.start).Round(time.Millisecond), sr.rate)
	}
	dl := now.Add(sr.idle)
	if due.Before(dl) {
		dl = due
	}
	// Servers that cannot set deadlines (ErrNotSupported) still get the
	// rate check between reads.
	_ = sr.rc.SetReadDeadline(dl)
	n, err := sr.r.Read(p)
	sr.n += int64(n)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if dl.Equal(due) {
			err = fmt.Errorf("%w: %d bytes in %v, under %d bytes/s", ErrSlowClient, sr.n, time.Since(sr.start).Round(time.Millisecond), sr.rate)
		} else {
			err = fmt.Errorf("%w: nothing received for %v", ErrSlowClient, sr.idle)
		}
	}
	return n, err
}

func (s *Server) acquire(ctx context.Context) error {
	// The semaphore is made on first use so that a zero Server works.
	s.once.Do(func() {
		n := s.MaxConcurrent
		if n <= 0 {
			n = DefaultMaxConcurrent
		}
		s.sem = make(chan struct{}, n)
	})
	wait := s.SlotWait
	if wait <= 0 {
		wait = DefaultSlotWait
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("dicomweb: %w", ctx.Err())
	case <-t.C:
		return fmt.Errorf("dicomweb: all %d request slots busy for %v", cap(s.sem), wait)
	}
}

func (s *Server) release() { <-s.sem }

// store reads the parts one at a time and accepts each. The error is set
// when the request itself is malformed or truncated; resp then still
// lists what was stored before.
func (s *Server) store(ctx context.Context, mr *multipart.Reader, study string, maxInst int64, maxParts int) (*Response, error) {
	resp := &Response{}
	for n := 0; ; n++ {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			if n == 0 {
				return resp, errors.New("the request has no parts")
			}
			return resp, nil
		}
		if err != nil {
			return resp, fmt.Errorf("reading part %d: %w", n+1, err)
		}
		if n >= maxParts {
			return resp, fmt.Errorf("more than %d parts", maxParts)
		}
		name := fmt.Sprintf("part %d", n+1)
		if ct := part.Header.Get("Content-Type"); ct != "" {
			if pt, _, err := mime.ParseMediaType(ct); err != nil || !strings.EqualFold(pt, MediaTypeDICOM) {
				resp.Failed = append(resp.Failed, SOPRef{FailureReason: ReasonCannotUnderstand,
					Cause: fmt.Sprintf("%s has Content-Type %q, want %s", name, ct, MediaTypeDICOM)})
				continue
			}
		}
		b, err := io.ReadAll(io.LimitReader(part, maxInst+1))
		if err != nil {
			return resp, fmt.Errorf("reading %s: %w", name, err)
		}
		if int64(len(b)) > maxInst {
			// Skip the rest of the part (NextPart discards it).
			resp.Failed = append(resp.Failed, SOPRef{FailureReason: ReasonOutOfResources,
				Cause: fmt.Sprintf("%s is over the %d-byte instance limit", name, maxInst)})
			continue
		}
		inst, err := s.Acceptor.Accept(ctx, name, b, study)
		if err != nil {
			fm, _ := ReadFileMeta(b)
			resp.Failed = append(resp.Failed, SOPRef{SOPClassUID: fm.SOPClassUID, SOPInstanceUID: fm.SOPInstanceUID,
				FailureReason: FailureReason(err), Cause: err.Error()})
			if ctx.Err() != nil {
				return resp, ctx.Err()
			}
			continue
		}
		cls := inst.SOPClassUID
		if cls == "" {
			cls = CTImageStorage
		}
		resp.Stored = append(resp.Stored, SOPRef{SOPClassUID: cls, SOPInstanceUID: inst.SOPInstanceUID})
	}
}

// writeResponse answers a request: the status from the outcome, the
// DICOM JSON body, one Warning header per failure.
func writeResponse(w http.ResponseWriter, resp *Response, reqErr error) {
	switch {
	case reqErr != nil:
		var mbe *http.MaxBytesError
		resp.Status = http.StatusBadRequest
		if errors.As(reqErr, &mbe) {
			resp.Status = http.StatusRequestEntityTooLarge
		}
	case len(resp.Failed) == 0:
		resp.Status = http.StatusOK
	case len(resp.Stored) > 0:
		resp.Status = http.StatusAccepted
	default:
		resp.Status = http.StatusConflict
	}
	if reqErr != nil {
		w.Header().Add("Warning", warning("request: "+reqErr.Error()))
	}
	for i, f := range resp.Failed {
		if i == maxWarnings {
			w.Header().Add("Warning", warning(fmt.Sprintf("%d more failures", len(resp.Failed)-i)))
			break
		}
		w.Header().Add("Warning", warning(fmt.Sprintf("%s: failure reason %04X: %s", orDash(f.SOPInstanceUID), f.FailureReason, f.Cause)))
	}
	b, err := json.Marshal(resp.dicomJSON())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", MediaTypeDICOMJSON)
	w.WriteHeader(resp.Status)
	w.Write(b)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// warning formats an RFC 7234 Warning header value (code 299), with the
// text made safe for a quoted string on one line.
func warning(text string) string {
	text = strings.Map(func(r rune) rune {
		if r < 0x20 || r == '"' || r == '\\' || r > 0x7e {
			return '\''
		}
		return r
	}, text)
	if len(text) > 400 {
		text = text[:400] + "..."
	}
	return `299 lungseg "` + text + `"`
}

func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Add("Warning", warning(msg))
	http.Error(w, "dicomweb: "+msg, status)
}

// validUID reports whether s has the syntax of a DICOM UID.
func validUID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return true
}

// DICOM JSON model (PS3.18 Annex F) of the store instances response.

type jsonAttr struct {
	VR    string `json:"vr"`
	Value []any  `json:"Value,omitempty"`
}

const (
	tagFailureReason     = "00081197"
	tagFailedSOPSeq      = "00081198"
	tagReferencedSOPSeq  = "00081199"
	tagRefSOPClassUID    = "00081150"
	tagRefSOPInstanceUID = "00081155"
)

func (r *Response) dicomJSON() map[string]jsonAttr {
	item := func(f SOPRef, failed bool) map[string]jsonAttr {
		m := map[string]jsonAttr{
			tagRefSOPClassUID:    {VR: "UI"},
			tagRefSOPInstanceUID: {VR: "UI"},
		}
		if f.SOPClassUID != "" {
			m[tagRefSOPClassUID] = jsonAttr{VR: "UI", Value: []any{f.SOPClassUID}}
		}
		if f.SOPInstanceUID != "" {
			m[tagRefSOPInstanceUID] = jsonAttr{VR: "UI", Value: []any{f.SOPInstanceUID}}
		}
		if failed {
			m[tagFailureReason] = jsonAttr{VR: "US", Value: []any{f.FailureReason}}
		}
		return m
	}
	out := map[string]jsonAttr{}
	if len(r.Stored) > 0 {
		a := jsonAttr{VR: "SQ"}
		for _, s := range r.Stored {
			a.Value = append(a.Value, item(s, false))
		}
		out[tagReferencedSOPSeq] = a
	}
	if len(r.Failed) > 0 {
		a := jsonAttr{VR: "SQ"}
		for _, f := range r.Failed {
			a.Value = append(a.Value, item(f, true))
		}
		out[tagFailedSOPSeq] = a
	}
	return out
}

// parseDICOMJSON reads a store instances response body.
func parseDICOMJSON(b []byte) (stored, failed []SOPRef, err error) {
	var m map[string]struct {
		VR    string            `json:"vr"`
		Value []json.RawMessage `json:"Value"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, nil, fmt.Errorf("dicomweb: decoding the store response: %w", err)
	}
	refs := func(key string) ([]SOPRef, error) {
		var out []SOPRef
		for _, raw := range m[key].Value {
			var it map[string]struct {
				Value []json.RawMessage `json:"Value"`
			}
			if err := json.Unmarshal(raw, &it); err != nil {
				return nil, fmt.Errorf("dicomweb: decoding the store response: %w", err)
			}
			var ref SOPRef
			str := func(k string) string {
				var s string
				if v := it[k].Value; len(v) > 0 {
					json.Unmarshal(v[0], &s)
				}
				return s
			}
			ref.SOPClassUID, ref.SOPInstanceUID = str(tagRefSOPClassUID), str(tagRefSOPInstanceUID)
			if v := it[tagFailureReason].Value; len(v) > 0 {
				json.Unmarshal(v[0], &ref.FailureReason)
			}
			out = append(out, ref)
		}
		return out, nil
	}
	if stored, err = refs(tagReferencedSOPSeq); err != nil {
		return nil, nil, err
	}
	failed, err = refs(tagFailedSOPSeq)
	return stored, failed, err
}
