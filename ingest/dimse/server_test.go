package dimse

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/ingest/dicomweb"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// startSCP runs a server on a loopback port; handler nil records the
// requests and answers success.
func startSCP(t *testing.T, cfg Config, h StoreHandler) (addr string, got func() []*StoreRequest) {
	t.Helper()
	var mu sync.Mutex
	var reqs []*StoreRequest
	if h == nil {
		h = func(ctx context.Context, r *StoreRequest) (uint16, error) {
			mu.Lock()
			reqs = append(reqs, r)
			mu.Unlock()
			return StatusSuccess, nil
		}
	}
	s, err := New(cfg, h, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), func() []*StoreRequest {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(reqs)
	}
}

func hostPort(t *testing.T, addr string) (string, string) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// writeSeries writes n phantom slices as CT files and returns them.
func writeSeries(t *testing.T, seed int64, n int) ([]phantom.Slice, []string) {
	t.Helper()
	dir := t.TempDir()
	sl := phantom.Generate(seed, n, phantom.Options{Rows: 64, Cols: 56, Series: true})
	var paths []string
	for i, s := range sl {
		p := filepath.Join(dir, fmt.Sprintf("s%03d.dcm", i+1))
		err := dicomwrite.WriteFile(p, dicomwrite.Series{StudyUID: s.StudyUID, SeriesUID: s.SeriesUID, Intercept: -1024},
			dicomwrite.Instance{HU: s.HU, SpacingRowMm: s.SpacingMm, SpacingColMm: s.SpacingMm,
				PositionMm: [3]float64{0, 0, s.PositionMm}, InstanceNumber: i + 1, UID: s.InstanceUID})
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return sl, paths
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func TestEchoscu(t *testing.T) {
	echoscu := testenv.RequireCommand(t, "echoscu")
	addr, _ := startSCP(t, Config{AETitle: "LUNGSEG", AllowedCallingAEs: []string{"SCANNER"}}, nil)
	h, p := hostPort(t, addr)
	if out, err := run(t, echoscu, "-v", "-aet", "SCANNER", "-aec", "LUNGSEG", h, p); err != nil {
		t.Fatalf("echoscu: %v\n%s", err, out)
	}
	// Wrong called AE, calling AE not allowed: association rejected.
	for _, args := range [][]string{{"-aet", "SCANNER", "-aec", "OTHER"}, {"-aet", "INTRUDER", "-aec", "LUNGSEG"}} {
		out, err := run(t, echoscu, append(args, h, p)...)
		if err == nil || !strings.Contains(out, "Rejected") {
			t.Errorf("echoscu %v: err %v, output %q; want a rejected association", args, err, out)
		}
	}
}

// TestStorescuIntoJetStream sends a phantom series with dcmtk's storescu,
// in explicit and implicit VR little endian and explicit big endian, to
// an SCP whose handler is the dicomweb.Acceptor, and checks that the
// slices are in the RAW stream with the phantom's HU values.
func TestStorescuIntoJetStream(t *testing.T) {
	storescu := testenv.RequireCommand(t, "storescu")
	b := bustest.Start(t)
	acc := &dicomweb.Acceptor{JS: b.JS, Models: []string{"m"}, ReplayID: "dimse-test", Source: "dimse", Log: zerolog.Nop()}
	handler := func(ctx context.Context, r *StoreRequest) (uint16, error) {
		_, err := acc.Accept(ctx, "C-STORE "+r.SOPInstanceUID, r.Part10(), "")
		return dicomweb.FailureReason(err), err
	}
	cases := []struct {
		name, flag string
		syntaxes   []string
	}{
		{"explicit LE", "-xe", nil},
		{"implicit LE", "-xi", nil},
		{"explicit BE", "-xb", []string{ExplicitVRBigEndian}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr, _ := startSCP(t, Config{TransferSyntaxes: c.syntaxes, MaxPDULength: 16 << 10}, handler)
			h, p := hostPort(t, addr)
			ph, files := writeSeries(t, int64(30+i), 3)
			args := append([]string{"-v", c.flag, "-aet", "SCANNER", "-aec", "LUNGSEG", h, p}, files...)
			out, err := run(t, storescu, args...)
			if err != nil {
				t.Fatalf("storescu: %v\n%s", err, out)
			}
			if n := strings.Count(out, "Received Store Response (Success)"); n != 3 {
				t.Fatalf("%d successful stores, want 3:\n%s", n, out)
			}
			got := map[string]*lungsegv1.Slice{}
			for _, s := range rawSlices(t, b.JS) {
				got[s.Meta.InstanceUid] = s
			}
			for _, p := range ph {
				s := got[p.InstanceUID]
				if s == nil {
					t.Fatalf("instance %s not in RAW", p.InstanceUID)
				}
				hu, err := imgx.DecodeHU(int(s.Meta.Rows), int(s.Meta.Cols), s.Hu)
				if err != nil || !slices.Equal(hu.Pix, p.HU.Pix) {
					t.Errorf("instance %s: HU differs (%v)", p.InstanceUID, err)
				}
				if s.Meta.Source != "dimse" || s.Meta.SeriesUid != p.SeriesUID || s.Meta.SlicePosition != p.PositionMm {
					t.Errorf("meta %+v", s.Meta)
				}
			}
		})
	}
	// Bad instances get a failure status and the association goes on.
	t.Run("bad instances", func(t *testing.T) {
		addr, _ := startSCP(t, Config{}, handler)
		h, p := hostPort(t, addr)
		_, files := writeSeries(t, 40, 1)
		// An RLE Lossless file, proposed in its own syntax only (-R), is
		// accepted and decoded; a JPEG-LS one is refused at negotiation
		// and storescu cannot send it.
		rle := filepath.Join(t.TempDir(), "rle.dcm")
		if out, err := run(t, "dcmcrle", files[0], rle); err != nil {
			t.Fatalf("dcmcrle: %v %s", err, out)
		}
		out, err := run(t, storescu, "-v", "-R", "-xr", "-aet", "SCANNER", "-aec", "LUNGSEG", h, p, rle)
		if err != nil || !strings.Contains(out, "Received Store Response (Success)") || !strings.Contains(out, "-> RLE Lossless") {
			t.Errorf("RLE file: %v\n%s", err, out)
		}
		jls := filepath.Join(t.TempDir(), "jls.dcm")
		if out, err := run(t, "dcmcjpls", files[0], jls); err != nil {
			t.Fatalf("dcmcjpls: %v %s", err, out)
		}
		out, err = run(t, storescu, "-v", "-R", "-aet", "SCANNER", "-aec", "LUNGSEG", h, p, jls)
		if err == nil || strings.Contains(out, "Received Store Response") {
			t.Errorf("JPEG-LS file: %v\n%s", err, out)
		}
		// A CT with Modality MR: status A900 with the cause.
		mr := filepath.Join(t.TempDir(), "mr.dcm")
		data, _ := os.ReadFile(files[0])
		os.WriteFile(mr, data, 0o644)
		if out, err := run(t, "dcmodify", "-nb", "-m", "(0008,0060)=MR", mr); err != nil {
			t.Fatalf("dcmodify: %v %s", err, out)
		}
		out, _ = run(t, storescu, "-d", "-nh", "-aet", "SCANNER", "-aec", "LUNGSEG", h, p, mr, files[0])
		if !strings.Contains(strings.ToLower(out), "0xa900") {
			t.Errorf("MR modality: want status A900:\n%s", out)
		}
		if !strings.Contains(out, "modality is MR") {
			t.Errorf("the error comment does not give the cause:\n%s", out)
		}
		if !strings.Contains(out, "0x0000: Success") {
			t.Errorf("the good file after the bad one was not stored:\n%s", out)
		}
	})
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

// rawClient speaks the upper layer by hand, for hostile input.
type rawClient struct {
	t *testing.T
	c net.Conn
}

func dial(t *testing.T, addr string) *rawClient {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawClient{t, c}
}

func (r *rawClient) send(b []byte) { r.c.Write(b) }

// reply reads one PDU; io.EOF when the server closed the connection.
func (r *rawClient) reply() (byte, []byte, error) { return readPDU(r.c, 1<<24) }

func ae(s string) []byte { return []byte(fmt.Sprintf("%-16s", s)) }

// associateRQ builds an A-ASSOCIATE-RQ proposing one context per
// (abstract, syntaxes) pair.
func associateRQ(called, calling string, maxLen uint32, contexts ...[]string) []byte {
	b := []byte{0, 1, 0, 0}
	b = append(b, ae(called)...)
	b = append(b, ae(calling)...)
	b = append(b, make([]byte, 32)...)
	b = appendItem(b, itemAppContext, []byte(appContext))
	for i, c := range contexts {
		sub := appendItem(nil, itemAbstract, []byte(c[0]))
		for _, ts := range c[1:] {
			sub = appendItem(sub, itemTransfer, []byte(ts))
		}
		b = appendItem(b, itemPresContextRQ, append([]byte{byte(2*i + 1), 0, 0, 0}, sub...))
	}
	ml := binary.BigEndian.AppendUint32(nil, maxLen)
	b = appendItem(b, itemUserInfo, appendItem(appendItem(nil, itemMaxLength, ml), itemImplClass, []byte("1.2.3")))
	h := []byte{pduAssociateRQ, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[2:], uint32(len(b)))
	return append(h, b...)
}

func pdataPDU(ctx byte, command, last bool, data []byte) []byte {
	var buf bytes.Buffer
	writePData(&buf, ctx, command, data, 0)
	b := buf.Bytes()
	if !last {
		b[11] &^= 2
	}
	return b
}

// results parses an A-ASSOCIATE-AC into context id → result.
func results(t *testing.T, body []byte) map[byte]byte {
	r := &itemReader{b: body[68:]}
	out := map[byte]byte{}
	for !r.done() {
		typ, v, err := r.next()
		if err != nil {
			t.Fatal(err)
		}
		if typ == itemPresContextAC {
			out[v[0]] = v[2]
		}
	}
	return out
}

func storeRQ(msgID uint16, class, inst string) []byte {
	w := &cmdWriter{}
	w.elem(0x0002, evenUID(class))
	w.us(0x0100, cStoreRQ)
	w.us(0x0110, msgID)
	w.us(0x0700, 0)
	w.us(0x0800, 0)
	w.elem(0x1000, evenUID(inst))
	out := &cmdWriter{}
	out.elem(0, binary.LittleEndian.AppendUint32(nil, uint32(len(w.b))))
	return append(out.b, w.b...)
}

func TestNegotiation(t *testing.T) {
	addr, _ := startSCP(t, Config{}, nil)
	r := dial(t, addr)
	r.send(associateRQ("LUNGSEG", "ANY", 0,
		[]string{"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"}, // JPEG-LS, JPEG 2000 only
		[]string{"1.2.840.10008.5.1.4.1.1.4", ExplicitVRLittleEndian},                             // MR
		[]string{"1.2.840.10008.5.1.4.1.1.2.1", ImplicitVRLittleEndian, ExplicitVRLittleEndian},   // Enhanced CT
		[]string{VerificationSOPClass, ImplicitVRLittleEndian},
	))
	typ, body, err := r.reply()
	if err != nil || typ != pduAssociateAC {
		t.Fatalf("reply %x %v", typ, err)
	}
	got := results(t, body)
	want := map[byte]byte{1: 4, 3: 3, 5: 0, 7: 0}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("context %d: result %d, want %d", id, got[id], w)
		}
	}
}

// TestHostileInput sends malformed PDUs and checks each gets an abort or
// a rejection, and that the server still serves C-ECHO afterwards.
func TestHostileInput(t *testing.T) {
	addr, got := startSCP(t, Config{MaxPDULength: 4096, MaxDataSetBytes: 10000, Timeout: 2 * time.Second}, nil)
	ct := []string{"1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian}
	good := associateRQ("LUNGSEG", "ANY", 0, ct)
	cases := []struct {
		name string
		pdus [][]byte
		want byte // PDU type expected back; 0 = connection closed
	}{
		{"huge associate length", [][]byte{{1, 0, 0xff, 0xff, 0xff, 0xff}}, pduAbort},
		{"unknown pdu type", [][]byte{{9, 0, 0, 0, 0, 4, 0, 0, 0, 0}}, pduAbort},
		{"p-data first", [][]byte{pdataPDU(1, true, true, []byte{1, 2})}, pduAbort},
		{"truncated associate", [][]byte{good[:40]}, 0},
		{"item past its pdu", [][]byte{func() []byte {
			b := slices.Clone(good)
			b[6+68+2], b[6+68+3] = 0xff, 0xff // application context item length
			return b
		}()}, pduAbort},
		{"bad protocol version", [][]byte{func() []byte { b := slices.Clone(good); b[7] = 0; return b }()}, pduAssociateRJ},
		{"huge p-data", [][]byte{good, {4, 0, 0x7f, 0xff, 0xff, 0xff}}, pduAbort},
		{"pdv length past pdu", [][]byte{good, {4, 0, 0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 1, 3, 0, 0}}, pduAbort},
		{"pdv on unaccepted context", [][]byte{good, pdataPDU(3, true, true, storeRQ(1, ct[0], "1.2.3"))}, pduAbort},
		{"data set over the limit", append([][]byte{good, pdataPDU(1, true, true, storeRQ(1, ct[0], "1.2.3"))},
			slices.Repeat([][]byte{pdataPDU(1, false, false, make([]byte, 4000))}, 4)...), pduAbort},
		{"command element past its set", [][]byte{good, pdataPDU(1, true, true, []byte{0, 0, 0, 1, 0xff, 0xff, 0, 0})}, pduAbort},
		{"data without command", [][]byte{good, pdataPDU(1, false, true, []byte{1, 2})}, pduAbort},
		{"release mid-message", [][]byte{good, pdataPDU(1, true, true, storeRQ(1, ct[0], "1.2.3")), {5, 0, 0, 0, 0, 4, 0, 0, 0, 0}}, pduAbort},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := dial(t, addr)
			var last byte
			var err error
			for _, p := range c.pdus {
				r.send(p)
			}
			for {
				last, _, err = r.reply()
				if err != nil || last != pduAssociateAC {
					break
				}
			}
			if c.want == 0 {
				if err == nil {
					t.Errorf("got PDU 0x%02x, want the connection closed", last)
				}
				return
			}
			if err != nil || last != c.want {
				t.Errorf("got PDU 0x%02x (%v), want 0x%02x", last, err, c.want)
			}
		})
	}
	if n := len(got()); n != 0 {
		t.Errorf("%d instances reached the handler", n)
	}
	// Still serving.
	if echoscu, err := exec.LookPath("echoscu"); err == nil {
		h, p := hostPort(t, addr)
		if out, err := run(t, echoscu, "-aec", "LUNGSEG", h, p); err != nil {
			t.Fatalf("echo after hostile input: %v\n%s", err, out)
		}
	}
}

// TestStoreByHand runs one C-STORE split over several P-DATA PDUs and
// checks the reassembled data set and the response.
func TestStoreByHand(t *testing.T) {
	addr, got := startSCP(t, Config{}, nil)
	ct := []string{"1.2.840.10008.5.1.4.1.1.2", ImplicitVRLittleEndian}
	r := dial(t, addr)
	r.send(associateRQ("LUNGSEG", "HAND", 1000, ct))
	if typ, _, err := r.reply(); err != nil || typ != pduAssociateAC {
		t.Fatalf("%x %v", typ, err)
	}
	cmd := storeRQ(7, ct[0], "1.2.3.4")
	r.send(pdataPDU(1, true, false, cmd[:20]))
	r.send(pdataPDU(1, true, true, cmd[20:]))
	data := bytes.Repeat([]byte("0123456789"), 300)
	for i := 0; i < len(data); i += 700 {
		r.send(pdataPDU(1, false, i+700 >= len(data), data[i:min(i+700, len(data))]))
	}
	typ, body, err := r.reply()
	if err != nil || typ != pduPData {
		t.Fatalf("%x %v", typ, err)
	}
	pd, err := parsePData(body)
	if err != nil || len(pd) != 1 || !pd[0].command || !pd[0].last {
		t.Fatalf("%+v %v", pd, err)
	}
	rsp, err := parseCommand(pd[0].data)
	if err != nil || rsp.field != cStoreRSP || rsp.respondingTo != 7 || rsp.status != 0 || rsp.sopUID != "1.2.3.4" {
		t.Fatalf("response %v %+v", err, rsp)
	}
	r.send([]byte{5, 0, 0, 0, 0, 4, 0, 0, 0, 0})
	if typ, _, err := r.reply(); err != nil || typ != pduReleaseRP {
		t.Fatalf("release: %x %v", typ, err)
	}
	reqs := got()
	if len(reqs) != 1 || !bytes.Equal(reqs[0].DataSet, data) || reqs[0].CallingAE != "HAND" || reqs[0].TransferSyntax != ImplicitVRLittleEndian {
		t.Fatalf("handler got %d requests", len(reqs))
	}
	// The Part 10 wrapper is readable by the file meta reader.
	fm, err := dicomweb.ReadFileMeta(reqs[0].Part10())
	if err != nil || fm.SOPInstanceUID != "1.2.3.4" || fm.TransferSyntax != ImplicitVRLittleEndian || fm.SOPClassUID != ct[0] {
		t.Errorf("Part10 meta %+v %v", fm, err)
	}
}

func TestMaxAssociations(t *testing.T) {
	addr, _ := startSCP(t, Config{MaxAssociations: 1}, nil)
	first := dial(t, addr)
	first.send(associateRQ("LUNGSEG", "A", 0, []string{VerificationSOPClass, ImplicitVRLittleEndian}))
	if typ, _, err := first.reply(); err != nil || typ != pduAssociateAC {
		t.Fatalf("%x %v", typ, err)
	}
	second := dial(t, addr)
	second.send(associateRQ("LUNGSEG", "B", 0, []string{VerificationSOPClass, ImplicitVRLittleEndian}))
	typ, body, err := second.reply()
	if err != nil || typ != pduAssociateRJ || body[1] != 2 || body[2] != rjSourcePresentation {
		t.Fatalf("second association: %x %v %v, want a transient rejection", typ, body, err)
	}
}

// holdIdle keeps n TCP connections to addr open from the local IP from
// without sending a byte, and opens a new one whenever the server closes
// one, until the test ends: the probe's idle-connection exhaustion,
// reconnecting included.
func holdIdle(t *testing.T, addr, from string, n int) (reconnects func() int) {
	t.Helper()
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	probe, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dialling %s from %s: %v", addr, from, err)
	}
	probe.Close()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	count := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := d.Dial("tcp", addr)
				if err == nil {
					closed := make(chan struct{})
					go func() { c.Read(make([]byte, 1)); close(closed) }()
					select {
					case <-stop:
						c.Close()
						return
					case <-closed:
						c.Close()
						mu.Lock()
						count++
						mu.Unlock()
					}
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	return func() int { mu.Lock(); defer mu.Unlock(); return count }
}

// TestIdleConnectionsDoNotBlock holds 40 idle connections from one
// address (127.0.0.2) that reconnect when dropped: more than
// MaxAssociations and the per-address pending limit, so the server keeps
// closing the oldest of them. It checks that a normal association, and a
// dcmtk storescu where installed, from another address (127.0.0.1) still
// get through within seconds. (A client at the probe's own address is
// not protected: once its pending connection is the oldest idle one of
// that address, which takes 16 of the probe's reconnects, a few
// milliseconds, it is closed like them; on a loaded 2-core CI machine
// storescu could take that long to send its first byte.)
func TestIdleConnectionsDoNotBlock(t *testing.T) {
	addr, got := startSCP(t, Config{}, nil)
	reconnects := holdIdle(t, addr, "127.0.0.2", 40)
	time.Sleep(300 * time.Millisecond) // let them all connect
	if reconnects() == 0 {
		t.Fatal("no idle connection was closed: the per-address pending limit was not reached")
	}
	start := time.Now()
	r := dial(t, addr)
	r.c.SetDeadline(time.Now().Add(5 * time.Second))
	r.send(associateRQ("LUNGSEG", "NORMAL", 0, []string{VerificationSOPClass, ImplicitVRLittleEndian}))
	if typ, body, err := r.reply(); err != nil || typ != pduAssociateAC {
		t.Fatalf("association beside 40 idle connections: PDU 0x%02x %v %v, want A-ASSOCIATE-AC", typ, body, err)
	}
	t.Logf("associated in %v beside 40 idle connections (%d dropped and reopened so far)", time.Since(start), reconnects())
	storescu, err := exec.LookPath("storescu")
	if err != nil {
		t.Log("no storescu: dcmtk part skipped")
		return
	}
	_, paths := writeSeries(t, 5, 2)
	h, p := hostPort(t, addr)
	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, storescu, append([]string{"-aec", "LUNGSEG", "-to", "10", h, p}, paths...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("storescu beside 40 idle connections: %v\n%s", err, out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("storescu took %v", took)
	}
	if n := len(got()); n != 2 {
		t.Errorf("handler got %d instances, want 2", n)
	}
	t.Logf("storescu stored 2 instances in %v", time.Since(start))
}

// TestAssociateTimeout checks that a connection that sends no
// A-ASSOCIATE-RQ is closed after AssociateTimeout, and one whose request
// trickles in too slowly too.
func TestAssociateTimeout(t *testing.T) {
	addr, _ := startSCP(t, Config{AssociateTimeout: 300 * time.Millisecond}, nil)
	for _, name := range []string{"idle", "trickle"} {
		t.Run(name, func(t *testing.T) {
			r := dial(t, addr)
			start := time.Now()
			if name == "trickle" {
				go func() {
					rq := associateRQ("LUNGSEG", "SLOW", 0, []string{VerificationSOPClass, ImplicitVRLittleEndian})
					for _, b := range rq {
						if _, err := r.c.Write([]byte{b}); err != nil {
							return
						}
						time.Sleep(50 * time.Millisecond)
					}
				}()
			}
			typ, _, err := r.reply()
			if err == nil {
				t.Fatalf("got PDU 0x%02x, want the connection closed", typ)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("closed after %v, want about 300ms", took)
			}
		})
	}
}

// TestAssociationsPerAddress checks that one remote address cannot take
// every association: with one allowed per address, a second from
// 127.0.0.1 is rejected as transient while one from 127.0.0.2 is
// accepted.
func TestAssociationsPerAddress(t *testing.T) {
	addr, _ := startSCP(t, Config{MaxAssociationsPerAddress: 1}, nil)
	rq := associateRQ("LUNGSEG", "A", 0, []string{VerificationSOPClass, ImplicitVRLittleEndian})
	first := dial(t, addr)
	first.send(rq)
	if typ, _, err := first.reply(); err != nil || typ != pduAssociateAC {
		t.Fatalf("first: %x %v", typ, err)
	}
	second := dial(t, addr)
	second.send(rq)
	if typ, body, err := second.reply(); err != nil || typ != pduAssociateRJ || body[1] != 2 {
		t.Fatalf("second from the same address: %x %v %v, want a transient rejection", typ, body, err)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot dial from 127.0.0.2: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(rq)
	if typ, _, err := readPDU(c, 1<<20); err != nil || typ != pduAssociateAC {
		t.Fatalf("from another address: %x %v, want accepted", typ, err)
	}
}

// TestIdleAssociationTimesOut checks that an association that goes
// quiet, or that announces a PDU and sends nothing of it, is dropped
// after Timeout.
func TestIdleAssociationTimesOut(t *testing.T) {
	addr, _ := startSCP(t, Config{Timeout: 400 * time.Millisecond, MinBytesPerSecond: 1 << 20}, nil)
	for _, name := range []string{"quiet", "announced pdu"} {
		t.Run(name, func(t *testing.T) {
			r := dial(t, addr)
			r.send(associateRQ("LUNGSEG", "A", 0, []string{VerificationSOPClass, ImplicitVRLittleEndian}))
			if typ, _, err := r.reply(); err != nil || typ != pduAssociateAC {
				t.Fatalf("%x %v", typ, err)
			}
			start := time.Now()
			if name == "announced pdu" {
				r.send([]byte{pduPData, 0, 0, 0, 0x10, 0})
			}
			for {
				typ, _, err := r.reply()
				if err != nil {
					break
				}
				if typ != pduAbort {
					t.Fatalf("got PDU 0x%02x", typ)
				}
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("dropped after %v, want about 400ms", took)
			}
		})
	}
}

// TestForgetAfterEviction: a connection closed to make room for another
// of its address is forgotten (its goroutine ends) after the address's
// last counted connection has gone. That used to dereference the deleted
// per-address entry and crash the server (seen in CI under an idle flood).
func TestForgetAfterEviction(t *testing.T) {
	s, err := New(Config{MaxPendingPerAddress: 1}, func(context.Context, *StoreRequest) (uint16, error) {
		return StatusSuccess, nil
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	defer a2.Close()
	defer b2.Close()
	a := s.admit(a1)
	b := s.admit(b1) // over the per-address limit: a is closed to make room
	if a == nil || b == nil || a.pending || !b.pending {
		t.Fatalf("admit: a %+v, b %+v; want a evicted and b pending", a, b)
	}
	s.forget(b) // the address's last counted connection: its entry goes
	if len(s.byHost) != 0 {
		t.Fatalf("byHost %v after the last counted connection", s.byHost)
	}
	s.forget(a) // panicked before
	if len(s.conns) != 0 || s.nPend != 0 || s.nAssoc != 0 || len(s.byHost) != 0 {
		t.Fatalf("counts left: conns %d, pending %d, associations %d, hosts %d", len(s.conns), s.nPend, s.nAssoc, len(s.byHost))
	}
}
