package dicomweb

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// phantomFiles returns n phantom CT slices of one series as Part 10 bytes.
func phantomFiles(t *testing.T, seed int64, n int) ([]phantom.Slice, [][]byte) {
	t.Helper()
	sl := phantom.Generate(seed, n, phantom.Options{Rows: 48, Cols: 40, Series: true})
	var out [][]byte
	for i, s := range sl {
		var buf bytes.Buffer
		err := dicomwrite.Write(&buf, dicomwrite.Series{StudyUID: s.StudyUID, SeriesUID: s.SeriesUID, Intercept: -1024},
			dicomwrite.Instance{HU: s.HU, SpacingRowMm: s.SpacingMm, SpacingColMm: s.SpacingMm,
				PositionMm: [3]float64{0, 0, s.PositionMm}, InstanceNumber: i + 1, UID: s.InstanceUID})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, buf.Bytes())
	}
	return sl, out
}

// withModality rewrites a Part 10 file with another Modality.
func withModality(t *testing.T, b []byte, modality string) []byte {
	t.Helper()
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ds.FindElementByTag(tag.Modality)
	if err != nil {
		t.Fatal(err)
	}
	ne, _ := dicom.NewElement(tag.Modality, []string{modality})
	e.Value = ne.Value
	var buf bytes.Buffer
	if err := dicom.Write(&buf, ds); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "dicomio", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type env struct {
	bus *bustest.Env
	srv *httptest.Server
	cl  *Client
	acc *Acceptor
}

func start(t *testing.T, configure func(*Server)) *env {
	t.Helper()
	b := bustest.Start(t)
	acc := &Acceptor{JS: b.JS, Models: []string{"m1", "m2"}, ReplayID: "stow-test", Source: "dicomweb", Log: zerolog.Nop()}
	s := NewServer(acc, "/dicomweb")
	if configure != nil {
		configure(s)
	}
	mux := http.NewServeMux()
	s.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &env{bus: b, srv: srv, acc: acc, cl: &Client{BaseURL: srv.URL + "/dicomweb"}}
}

func rawSlices(t *testing.T, js jetstream.JetStream) []*lungsegv1.Slice {
	t.Helper()
	var out []*lungsegv1.Slice
	for _, m := range bustest.Fetch(t, js, bus.StreamRaw, bus.SubjRaw) {
		var s lungsegv1.Slice
		if err := proto.Unmarshal(m.Data(), &s); err != nil {
			t.Fatal(err)
		}
		out = append(out, &s)
	}
	return out
}

func errorEvents(t *testing.T, js jetstream.JetStream) []*lungsegv1.ErrorEvent {
	t.Helper()
	var out []*lungsegv1.ErrorEvent
	for _, m := range bustest.Fetch(t, js, bus.StreamErrors, bus.ErrorsSubject(StageName, "stow-test")) {
		var e lungsegv1.ErrorEvent
		if err := proto.Unmarshal(m.Data(), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, &e)
	}
	return out
}

func TestStowStoresEveryInstanceBeforeAnswering(t *testing.T) {
	e := start(t, nil)
	ph, files := phantomFiles(t, 7, 4)
	resp, err := e.cl.Store(context.Background(), ph[0].StudyUID, files...)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != http.StatusOK || len(resp.Stored) != 4 || len(resp.Failed) != 0 {
		t.Fatalf("status %d, stored %d, failed %v", resp.Status, len(resp.Stored), resp.Failed)
	}
	for i, s := range resp.Stored {
		if s.SOPInstanceUID != ph[i].InstanceUID || s.SOPClassUID != CTImageStorage {
			t.Errorf("stored[%d] = %+v, want instance %s", i, s, ph[i].InstanceUID)
		}
	}
	// The 200 came after the PubAcks: the slices are in the stream now.
	got := rawSlices(t, e.bus.JS)
	if len(got) != 4 {
		t.Fatalf("%d slices in RAW, want 4", len(got))
	}
	for i, s := range got {
		p := ph[i]
		m := s.Meta
		if m.Id != p.InstanceUID || m.InstanceUid != p.InstanceUID || m.SeriesUid != p.SeriesUID || m.StudyUid != p.StudyUID {
			t.Errorf("slice %d meta %+v", i, m)
		}
		if m.ReplayId != "stow-test" || m.Source != "dicomweb" || !slices.Equal(m.Models, []string{"m1", "m2"}) || m.Frame != 1 {
			t.Errorf("slice %d meta %+v", i, m)
		}
		if m.SpacingRowMm != p.SpacingMm || m.SpacingAssumed || m.SlicePosition != p.PositionMm {
			t.Errorf("slice %d spacing/position %v %v %v", i, m.SpacingRowMm, m.SpacingAssumed, m.SlicePosition)
		}
		hu, err := imgx.DecodeHU(int(m.Rows), int(m.Cols), s.Hu)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(hu.Pix, p.HU.Pix) {
			t.Errorf("slice %d: HU differs from the phantom", i)
		}
	}
	// Sending the series again (a retrying PACS) stores nothing twice.
	if _, err := e.cl.Store(context.Background(), "", files...); err != nil {
		t.Fatal(err)
	}
	if n := len(rawSlices(t, e.bus.JS)); n != 4 {
		t.Errorf("after a resend, %d slices in RAW, want 4 (deduped)", n)
	}
}

func TestStowRejectsBadInstancesAndGoesOn(t *testing.T) {
	e := start(t, func(s *Server) { s.MaxInstanceBytes = 64 << 10 })
	ph, files := phantomFiles(t, 8, 2)
	big := append(append([]byte{}, files[0]...), make([]byte, 70<<10)...)
	cases := []struct {
		name   string
		data   []byte
		reason uint16
		want   string // in the Warning header
	}{
		{"jpeg-ls", fixture(t, "jpegls.dcm"), ReasonSyntaxNotSupported, "JPEG-LS"},
		{"deflate", fixture(t, "deflate.dcm"), ReasonSyntaxNotSupported, "Deflate"},
		{"mr sop class", fixture(t, "non_ct.dcm"), ReasonSOPClassNotSupp, "not a CT image storage class"},
		{"mr modality", withModality(t, files[1], "MR"), ReasonDataSetMismatch, "modality is MR"},
		{"no pixels", fixture(t, "nonimage.dcm"), ReasonDataSetMismatch, "no pixel data"},
		{"huge rows", fixture(t, "huge_rows.dcm"), ReasonOutOfResources, "declared size"},
		{"huge length", fixture(t, "huge_length.dcm"), ReasonCannotUnderstand, "needs 4294967280 bytes but the file has 768 left"},
		{"truncated", fixture(t, "truncated.dcm"), ReasonCannotUnderstand, "needs 384 bytes but the file has 284 left"},
		{"no preamble", fixture(t, "no_preamble.dcm"), ReasonCannotUnderstand, "not a DICOM Part 10 file"},
		{"oversized part", big, ReasonOutOfResources, "over the 65536-byte instance limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Each bad instance between two good ones: 202, the good ones
			// stored, the bad one failed with its reason.
			res, warn := post(t, e.srv.URL+"/dicomweb/studies", files[0], c.data, files[1])
			if res.Status != http.StatusAccepted {
				t.Fatalf("status %d, want 202", res.Status)
			}
			if len(res.Stored) != 2 || len(res.Failed) != 1 {
				t.Fatalf("stored %v failed %v", res.Stored, res.Failed)
			}
			if f := res.Failed[0]; f.FailureReason != c.reason {
				t.Errorf("failure reason %04X, want %04X (%s)", f.FailureReason, c.reason, warn)
			}
			if !strings.Contains(strings.ToLower(warn), strings.ToLower(c.want)) {
				t.Errorf("warning %q does not name %q", warn, c.want)
			}
			// Alone, it fails the whole request with 409.
			res, _ = post(t, e.srv.URL+"/dicomweb/studies", c.data)
			if res.Status != http.StatusConflict || len(res.Failed) != 1 {
				t.Errorf("alone: status %d failed %v, want 409", res.Status, res.Failed)
			}
		})
	}
	if n := len(rawSlices(t, e.bus.JS)); n != 2 {
		t.Errorf("%d slices in RAW, want the 2 good ones", n)
	}
	// Rejections are on the errors subject, deduped by instance UID (the
	// fixtures share one, so count distinct causes loosely).
	evs := errorEvents(t, e.bus.JS)
	if len(evs) == 0 {
		t.Fatal("no error events")
	}
	for _, ev := range evs {
		if !ev.Permanent || ev.Stage != StageName || ev.Error == "" || ev.Id == "" {
			t.Errorf("error event %+v", ev)
		}
	}
	if !slices.ContainsFunc(evs, func(ev *lungsegv1.ErrorEvent) bool {
		return ev.Id == ph[1].InstanceUID && strings.Contains(ev.Error, "modality is MR")
	}) {
		t.Errorf("no error event for the MR instance %s", ph[1].InstanceUID)
	}
}

// post sends raw parts and returns the parsed response and its Warning
// headers joined.
func post(t *testing.T, url string, parts ...[]byte) (*Response, string) {
	t.Helper()
	var body bytes.Buffer
	for _, p := range parts {
		fmt.Fprintf(&body, "--XyZ\r\nContent-Type: application/dicom\r\n\r\n")
		body.Write(p)
		body.WriteString("\r\n")
	}
	body.WriteString("--XyZ--\r\n")
	return postBody(t, url, `multipart/related; type="application/dicom"; boundary=XyZ`, body.Bytes())
}

func postBody(t *testing.T, url, ctype string, body []byte) (*Response, string) {
	t.Helper()
	res, err := http.Post(url, ctype, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	out := &Response{Status: res.StatusCode}
	if res.Header.Get("Content-Type") == MediaTypeDICOMJSON {
		if out.Stored, out.Failed, err = parseDICOMJSON(b); err != nil {
			t.Fatal(err)
		}
	}
	return out, strings.Join(res.Header.Values("Warning"), " | ")
}

func TestStowStudyMismatch(t *testing.T) {
	e := start(t, nil)
	ph, files := phantomFiles(t, 9, 1)
	res, err := e.cl.Store(context.Background(), "1.2.3.4", files...)
	if !errors.Is(err, ErrStoreFailed) || res.Status != http.StatusConflict {
		t.Fatalf("status %d err %v, want 409", res.Status, err)
	}
	if len(res.Failed) != 1 || res.Failed[0].FailureReason != ReasonDataSetMismatch || res.Failed[0].SOPInstanceUID != ph[0].InstanceUID {
		t.Errorf("failed %+v", res.Failed)
	}
	if !strings.Contains(err.Error(), "differs from the study 1.2.3.4") {
		t.Errorf("error %v does not say why", err)
	}
}

func TestStowMalformedRequests(t *testing.T) {
	e := start(t, func(s *Server) { s.MaxRequestBytes = 16 << 10; s.MaxParts = 3 })
	_, files := phantomFiles(t, 10, 4)
	url := e.srv.URL + "/dicomweb/studies"
	var many bytes.Buffer
	fmt.Fprintf(&many, "--B\r\n\r\n")
	many.Write(files[0])
	many.Write(make([]byte, 20<<10))
	many.WriteString("\r\n--B--\r\n")
	cases := []struct {
		name, ctype string
		body        []byte
		status      int
		stored      int
	}{
		{"json", "application/json", []byte("{}"), http.StatusUnsupportedMediaType, 0},
		{"dicom+xml parts", `multipart/related; type="application/dicom+xml"; boundary=B`, []byte("--B--\r\n"), http.StatusUnsupportedMediaType, 0},
		{"no boundary", `multipart/related; type="application/dicom"`, []byte("x"), http.StatusBadRequest, 0},
		{"no parts", `multipart/related; type="application/dicom"; boundary=B`, []byte("--B--\r\n"), http.StatusBadRequest, 0},
		// A stream cut inside the second part: the first is stored and
		// listed, the request fails.
		{"truncated stream", `multipart/related; type="application/dicom"; boundary=B`,
			append(append([]byte("--B\r\n\r\n"), files[0]...), append([]byte("\r\n--B\r\n\r\n"), files[1][:300]...)...), http.StatusBadRequest, 1},
		{"too many parts", `multipart/related; type="application/dicom"; boundary=B`,
			[]byte(strings.Repeat("--B\r\n\r\nx\r\n", 5) + "--B--\r\n"), http.StatusBadRequest, 0},
		{"request too large", `multipart/related; type="application/dicom"; boundary=B`, many.Bytes(), http.StatusRequestEntityTooLarge, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, warn := postBody(t, url, c.ctype, c.body)
			if res.Status != c.status {
				t.Fatalf("status %d, want %d (%s)", res.Status, c.status, warn)
			}
			if warn == "" {
				t.Error("no Warning header")
			}
			if c.stored >= 0 && len(res.Stored) != c.stored {
				t.Errorf("stored %d, want %d", len(res.Stored), c.stored)
			}
		})
	}
	// Bad study path.
	if res, _ := post(t, url+"/not-a-uid", files[0]); res.Status != http.StatusBadRequest {
		t.Errorf("bad study uid: status %d", res.Status)
	}
	// The service still works.
	res, err := e.cl.Store(context.Background(), "", files[2])
	if err != nil || res.Status != http.StatusOK {
		t.Fatalf("after the bad requests: %v %+v", err, res)
	}
}

func TestStowBusDown(t *testing.T) {
	e := start(t, nil)
	e.acc.PublishTimeout = 500 * time.Millisecond
	_, files := phantomFiles(t, 11, 1)
	e.bus.Server.Shutdown()
	res, err := e.cl.Store(context.Background(), "", files...)
	if !errors.Is(err, ErrStoreFailed) {
		t.Fatalf("err %v, want ErrStoreFailed", err)
	}
	if res.Status != http.StatusConflict || len(res.Failed) != 1 || res.Failed[0].FailureReason != ReasonOutOfResources {
		t.Errorf("status %d failed %+v, want 409 with A700 (retry later)", res.Status, res.Failed)
	}
}

func TestReadFileMeta(t *testing.T) {
	_, files := phantomFiles(t, 12, 1)
	fm, err := ReadFileMeta(files[0])
	if err != nil || fm.SOPClassUID != CTImageStorage || fm.TransferSyntax != "1.2.840.10008.1.2.1" || fm.SOPInstanceUID == "" {
		t.Fatalf("%+v %v", fm, err)
	}
	// Every truncation of the header is an error or a partial read, never
	// a panic or a huge allocation.
	for n := 0; n < 400; n++ {
		ReadFileMeta(files[0][:n])
	}
	bad := append([]byte{}, files[0][:200]...)
	bad[132+6], bad[132+7] = 0xff, 0xff // first element's length
	if _, err := ReadFileMeta(bad); err == nil || !strings.Contains(err.Error(), "past the end") {
		t.Errorf("huge declared length: %v", err)
	}
	if _, err := ReadFileMeta([]byte("hello")); err == nil {
		t.Error("no preamble accepted")
	}
}

// slowClient opens a raw connection to the server, sends STOW-RS headers
// announcing a 2 GB body, and then, with trickle, one byte of it every
// 100 ms (nothing otherwise). The returned channel gets the status line
// the server answers with ("" when it only closed the connection).
func slowClient(t *testing.T, srv *httptest.Server, trickle bool) <-chan string {
	t.Helper()
	c, err := net.DialTimeout("tcp", srv.Listener.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=b\r\nContent-Length: 2000000000\r\n\r\n")
	done := make(chan struct{})
	status := make(chan string, 1)
	go func() {
		defer close(done)
		line, _ := bufio.NewReader(c).ReadString('\n')
		status <- strings.TrimSpace(line)
	}()
	if trickle {
		go func() {
			body := "--b\r\nContent-Type: application/dicom\r\n\r\n" + strings.Repeat("x", 1000)
			for i := 0; i < len(body); i++ {
				select {
				case <-done:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := c.Write([]byte{body[i]}); err != nil {
					return
				}
			}
		}()
	}
	return status
}

// storeWithin stores a phantom instance and fails unless it is answered
// 200 within limit.
func storeWithin(t *testing.T, e *env, limit time.Duration) {
	t.Helper()
	ph, files := phantomFiles(t, 21, 1)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	resp, err := e.cl.Store(ctx, ph[0].StudyUID, files...)
	if err != nil {
		t.Fatalf("a normal STOW beside slow clients: %v after %v", err, time.Since(start))
	}
	if resp.Status != http.StatusOK || len(resp.Stored) != 1 {
		t.Fatalf("a normal STOW beside slow clients: status %d, %d stored", resp.Status, len(resp.Stored))
	}
	t.Logf("normal STOW answered in %v", time.Since(start))
}

// TestStowSlowClientsDoNotBlock holds eight connections that announce a
// 2 GB body and send none (twice the request slots), with the default
// limits, and checks that a normal STOW is answered within seconds.
func TestStowSlowClientsDoNotBlock(t *testing.T) {
	e := start(t, nil)
	for i := 0; i < 8; i++ {
		slowClient(t, e.srv, false)
	}
	time.Sleep(300 * time.Millisecond) // let their headers be read
	storeWithin(t, e, 5*time.Second)
}

// TestStowSlowClientsAreDropped fills every slot with clients that
// trickle their body a byte at a time, beside clients that send none,
// and checks that they are answered 408 once under the minimum rate or
// idle too long, and that a normal STOW gets through within seconds.
func TestStowSlowClientsAreDropped(t *testing.T) {
	e := start(t, func(s *Server) {
		s.MaxConcurrent = 4
		s.IdleTimeout = time.Second
		s.MinBytesPerSecond = 1000
		s.RateGrace = 500 * time.Millisecond
	})
	var slow []<-chan string
	for i := 0; i < 4; i++ {
		slow = append(slow, slowClient(t, e.srv, true), slowClient(t, e.srv, false))
	}
	time.Sleep(300 * time.Millisecond) // the tricklers hold every slot
	storeWithin(t, e, 5*time.Second)
	for i, ch := range slow {
		select {
		case st := <-ch:
			if !strings.Contains(st, " 408 ") {
				t.Errorf("slow client %d got %q, want 408", i, st)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("slow client %d still connected after 5 s", i)
		}
	}
}

// TestSlowReaderRate checks the rate arithmetic without a network.
func TestSlowReaderRate(t *testing.T) {
	s := &Server{MinBytesPerSecond: 100, RateGrace: time.Second, IdleTimeout: time.Hour}
	sr := s.slowReader(httptest.NewRecorder(), strings.NewReader(strings.Repeat("x", 1000)))
	sr.start = time.Now().Add(-3 * time.Second) // 3 s in: 200 bytes due
	sr.n = 150
	if _, err := sr.Read(make([]byte, 10)); !errors.Is(err, ErrSlowClient) {
		t.Fatalf("150 bytes after 3 s at 100 B/s with 1 s grace: %v, want ErrSlowClient", err)
	}
	sr.n = 250
	if _, err := sr.Read(make([]byte, 10)); err != nil {
		t.Fatalf("250 bytes after 3 s: %v", err)
	}
}
