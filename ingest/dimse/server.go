// Package dimse is a DICOM Storage SCP: it accepts associations from
// scanners and PACS that speak DIMSE (PS3.7, PS3.8) and receives CT
// images with C-STORE, and answers C-ECHO.
//
// No maintained Go DICOM networking library fits (grailbio/go-netdicom is
// unmaintained since 2019 and built on another DICOM parser; the newer
// ones are pre-1.0 ports), so this package writes the subset needed: the
// upper layer PDUs with strict length caps checked before allocating,
// association negotiation (configurable called AE title and allowed
// calling AEs; CT Image Storage, Enhanced CT and Legacy Converted
// Enhanced CT, and Verification; the uncompressed transfer syntaxes),
// P-DATA reassembly, and the C-STORE and C-ECHO command sets in implicit
// VR little endian. Every received instance is wrapped as a Part 10 file
// (Part10) and handed to a StoreHandler, whose status goes back in the
// C-STORE response; in lungseg the handler is the dicomweb.Acceptor, so a
// Success status is sent only once the instance's slices are in
// JetStream.
package dimse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
)

// UIDs.
const (
	VerificationSOPClass   = "1.2.840.10008.1.1"
	ImplicitVRLittleEndian = "1.2.840.10008.1.2"
	ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
	ExplicitVRBigEndian    = "1.2.840.10008.1.2.2"
	// ImplementationVersion names this SCP in associations and the Part
	// 10 files it makes.
	ImplementationVersion = "LUNGSEG_SCP_1"
)

// ImplementationClassUID identifies this SCP in associations and the Part
// 10 files it makes.
var ImplementationClassUID = dicomwrite.NewUID("lungseg", "ingest/dimse", "implementation")

// DefaultSOPClasses are the storage SOP classes accepted by default.
var DefaultSOPClasses = []string{
	"1.2.840.10008.5.1.4.1.1.2",   // CT Image Storage
	"1.2.840.10008.5.1.4.1.1.2.1", // Enhanced CT Image Storage
	"1.2.840.10008.5.1.4.1.1.2.2", // Legacy Converted Enhanced CT Image Storage
}

// DefaultTransferSyntaxes are the transfer syntaxes accepted by default
// (the proposer's order decides among them): the uncompressed ones, then the lossless
// compressions common for CT that ingest/dicomio decodes (RLE Lossless,
// JPEG Lossless process 14 with first-order or any predictor).
var DefaultTransferSyntaxes = []string{ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
	dicomio.SyntaxRLELossless, dicomio.SyntaxJPEGLosslessSV1, dicomio.SyntaxJPEGLossless}

// Statuses.
const (
	StatusSuccess           uint16 = 0x0000
	StatusOutOfResources    uint16 = 0xA700
	StatusSOPClassNotSupp   uint16 = 0x0122
	StatusUnrecognizedOp    uint16 = 0x0211
	StatusCannotUnderstand  uint16 = 0xC000
	StatusDataSetMismatch   uint16 = 0xA900
	statusProcessingFailure uint16 = 0x0110
)

// StoreRequest is one received C-STORE.
type StoreRequest struct {
	CallingAE, CalledAE         string
	SOPClassUID, SOPInstanceUID string
	TransferSyntax              string
	// DataSet is the data set as received, in TransferSyntax.
	DataSet []byte
}

// Part10 returns the request as a Part 10 file.
func (r *StoreRequest) Part10() []byte {
	return Part10(r.SOPClassUID, r.SOPInstanceUID, r.TransferSyntax, r.CallingAE, r.DataSet)
}

// StoreHandler stores one instance and returns the C-STORE status (0 for
// success); err, when set, is sent as the response's ErrorComment.
type StoreHandler func(ctx context.Context, r *StoreRequest) (status uint16, err error)

// Config configures a Server; zero fields take the defaults.
type Config struct {
	// AETitle is the called AE title the SCP answers to (default
	// "LUNGSEG"); associations to another title are rejected.
	AETitle string
	// AllowedCallingAEs, when not empty, are the only calling AE titles
	// accepted.
	AllowedCallingAEs []string
	SOPClasses        []string
	TransferSyntaxes  []string
	// MaxPDULength is the maximum P-DATA-TF length announced (default
	// 1 MiB); longer PDUs abort the association.
	MaxPDULength uint32
	// MaxDataSetBytes bounds one received data set (default 256 MiB);
	// a longer one aborts the association.
	MaxDataSetBytes int
	// Timeout bounds the wait for each PDU of an association, that is how
	// long an association may stay idle (default 30 s), and
	// HandlerTimeout the handler of one instance (default 2 min).
	Timeout, HandlerTimeout time.Duration
	// AssociateTimeout bounds the time from the TCP connection to a
	// complete A-ASSOCIATE-RQ (default 5 s, at most Timeout); a peer that
	// has not associated by then is disconnected.
	AssociateTimeout time.Duration
	// MinBytesPerSecond is the slowest a PDU may arrive once its header
	// is read (default 4 KiB/s): its body must be in within Timeout plus
	// its length at this rate, or the association is aborted.
	MinBytesPerSecond int
	// MaxAssociations bounds concurrent associations (default 16) and
	// MaxAssociationsPerAddress those of one remote IP address (default
	// 8); beyond them new ones are rejected as congested (transient).
	// Only connections that sent an A-ASSOCIATE-RQ count.
	MaxAssociations, MaxAssociationsPerAddress int
	// MaxPending bounds the connections that have not yet sent any byte
	// of their A-ASSOCIATE-RQ (default 256) and MaxPendingPerAddress
	// those of one remote IP address (default 16). Over either, the
	// oldest such idle connection (of that address, or of all) is closed
	// to make room; when none is idle (all are sending their request) the
	// new connection is closed.
	MaxPending, MaxPendingPerAddress int
}

func (c *Config) defaults() {
	if c.AETitle == "" {
		c.AETitle = "LUNGSEG"
	}
	if len(c.SOPClasses) == 0 {
		c.SOPClasses = DefaultSOPClasses
	}
	if len(c.TransferSyntaxes) == 0 {
		c.TransferSyntaxes = DefaultTransferSyntaxes
	}
	if c.MaxPDULength == 0 {
		c.MaxPDULength = 1 << 20
	}
	if c.MaxDataSetBytes <= 0 {
		c.MaxDataSetBytes = 256 << 20
	}
	if c.Timeout <= 0 {
		c.Timeout = 30 * time.Second
	}
	if c.AssociateTimeout <= 0 {
		c.AssociateTimeout = min(5*time.Second, c.Timeout)
	}
	if c.MinBytesPerSecond <= 0 {
		c.MinBytesPerSecond = 4 << 10
	}
	if c.MaxAssociationsPerAddress <= 0 {
		c.MaxAssociationsPerAddress = 8
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 256
	}
	if c.MaxPendingPerAddress <= 0 {
		c.MaxPendingPerAddress = 16
	}
	if c.HandlerTimeout <= 0 {
		c.HandlerTimeout = 2 * time.Minute
	}
	if c.MaxAssociations <= 0 {
		c.MaxAssociations = 16
	}
}

// Server is a Storage SCP. A connection is first pending (no
// A-ASSOCIATE-RQ yet; it counts against MaxPending and is dropped after
// AssociateTimeout), then an association (it counts against
// MaxAssociations) until it is released or aborted, so idle connections
// can never take the association slots.
type Server struct {
	cfg     Config
	handler StoreHandler
	log     zerolog.Logger

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]*connState
	byHost map[string]*hostCount
	nPend  int // pending connections
	nAssoc int // associations
	closed bool
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// connState is one connection's place in the limits (guarded by
// Server.mu).
type connState struct {
	c       net.Conn
	host    string
	since   time.Time
	pending bool // counted in nPend: no A-ASSOCIATE-RQ yet
	started bool // a first byte of the request arrived
	assoc   bool // counted in nAssoc
}

type hostCount struct{ pending, assoc int }

// New returns a Server.
func New(cfg Config, h StoreHandler, log zerolog.Logger) (*Server, error) {
	cfg.defaults()
	if len(cfg.AETitle) > 16 {
		return nil, fmt.Errorf("dimse: AE title %q is longer than 16 characters", cfg.AETitle)
	}
	if h == nil {
		return nil, errors.New("dimse: no store handler")
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, handler: h, log: log, conns: map[net.Conn]*connState{}, byHost: map[string]*hostCount{},
		ctx: ctx, cancel: cancel}, nil
}

// Serve accepts associations on ln until Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return net.ErrClosed
	}
	s.ln = ln
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
		st := s.admit(c)
		if st == nil {
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			defer s.forget(st)
			s.serveConn(st)
		}()
	}
}

// hostOf returns the IP address of a connection's peer.
func hostOf(c net.Conn) string {
	a := c.RemoteAddr().String()
	if h, _, err := net.SplitHostPort(a); err == nil {
		return h
	}
	return a
}

// admit registers a new connection as pending, closing the oldest idle
// pending connection of its address (or of all) when a limit is reached;
// nil when there is no room.
func (s *Server) admit(c net.Conn) *connState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	st := &connState{c: c, host: hostOf(c), since: time.Now()}
	hc := s.byHost[st.host]
	if hc == nil {
		hc = &hostCount{}
		s.byHost[st.host] = hc
	}
	for _, limit := range []struct {
		over func() bool
		host string
	}{
		{func() bool { return hc.pending >= s.cfg.MaxPendingPerAddress }, st.host},
		{func() bool { return s.nPend >= s.cfg.MaxPending }, ""},
	} {
		if !limit.over() {
			continue
		}
		old := s.oldestIdle(limit.host)
		if old == nil {
			s.log.Warn().Str("peer", c.RemoteAddr().String()).Int("pending", s.nPend).
				Msg("connection refused: too many connections without an association request")
			if hc.pending == 0 && hc.assoc == 0 {
				delete(s.byHost, st.host)
			}
			return nil
		}
		s.log.Info().Str("peer", old.c.RemoteAddr().String()).Dur("idle_ms", time.Since(old.since)).
			Msg("idle connection closed to make room for a new one")
		s.unpend(old)
		old.c.Close()
	}
	st.pending = true
	hc.pending++
	s.nPend++
	s.conns[c] = st
	return st
}

// oldestIdle returns the oldest pending connection that has sent nothing
// yet, of host ("" for any).
func (s *Server) oldestIdle(host string) *connState {
	var old *connState
	for _, st := range s.conns {
		if st.pending && !st.started && (host == "" || st.host == host) && (old == nil || st.since.Before(old.since)) {
			old = st
		}
	}
	return old
}

// unpend takes st out of the pending count (mu held).
func (s *Server) unpend(st *connState) {
	if st.pending {
		st.pending = false
		s.nPend--
		s.byHost[st.host].pending--
	}
}

// started marks that the first byte of st's request arrived: it can no
// longer be closed to make room.
func (s *Server) markStarted(st *connState) {
	s.mu.Lock()
	st.started = true
	s.mu.Unlock()
}

// promote turns a pending connection into an association; false when
// the association limits are reached (or the connection was closed to
// make room meanwhile).
func (s *Server) promote(st *connState) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !st.pending {
		return false
	}
	s.unpend(st)
	hc := s.byHost[st.host]
	if s.nAssoc >= s.cfg.MaxAssociations || hc.assoc >= s.cfg.MaxAssociationsPerAddress {
		return false
	}
	st.assoc = true
	s.nAssoc++
	hc.assoc++
	return true
}

// forget removes a finished connection from the counts.
func (s *Server) forget(st *connState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unpend(st)
	if st.assoc {
		st.assoc = false
		s.nAssoc--
		s.byHost[st.host].assoc--
	}
	// A connection closed to make room (admit) is no longer counted, and
	// its address's entry may already be gone when its goroutine ends.
	if hc := s.byHost[st.host]; hc != nil && hc.pending == 0 && hc.assoc == 0 {
		delete(s.byHost, st.host)
	}
	delete(s.conns, st.c)
}

// Close stops accepting, closes open associations and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return err
}

// assoc is one association's state.
type assoc struct {
	c        net.Conn
	r        *bufio.Reader
	rq       *assocRQ
	accepted map[byte]contextResult // by context id
	abstract map[byte]string
	peerMax  uint32
	log      zerolog.Logger
}

func (s *Server) serveConn(st *connState) {
	c := st.c
	log := s.log.With().Str("peer", c.RemoteAddr().String()).Logger()
	a := &assoc{c: c, r: bufio.NewReaderSize(c, 64<<10), log: log}
	if err := s.associate(a, st); err != nil {
		log.Warn().Err(err).Msg("association refused")
		return
	}
	log = log.With().Str("calling_ae", a.rq.callingAE).Logger()
	a.log = log
	log.Info().Int("contexts", len(a.accepted)).Msg("association accepted")
	if err := s.loop(a); err != nil {
		log.Warn().Err(err).Msg("association aborted")
		if errors.Is(err, ErrProtocol) {
			writePDU(c, pduAbort, encodeAbort(2, 6))
		}
		return
	}
	log.Info().Msg("association released")
}

func (s *Server) deadline(a *assoc) { a.c.SetDeadline(time.Now().Add(s.cfg.Timeout)) }

// bodyDeadline gives a PDU body of n bytes Timeout plus its length at
// MinBytesPerSecond to arrive.
func (s *Server) bodyDeadline(a *assoc) func(n uint32) {
	return func(n uint32) {
		d := s.cfg.Timeout + time.Duration(float64(n)/float64(s.cfg.MinBytesPerSecond)*float64(time.Second))
		a.c.SetReadDeadline(time.Now().Add(d))
	}
}

func (s *Server) associate(a *assoc, st *connState) error {
	// The whole request must be in within AssociateTimeout of the
	// connection, however it trickles in.
	a.c.SetDeadline(st.since.Add(s.cfg.AssociateTimeout))
	if _, err := a.r.Peek(1); err != nil {
		return fmt.Errorf("dimse: no A-ASSOCIATE-RQ within %v: %w", s.cfg.AssociateTimeout, err)
	}
	s.markStarted(st)
	typ, body, err := readPDU(a.r, 0)
	if err != nil {
		if errors.Is(err, ErrProtocol) {
			writePDU(a.c, pduAbort, encodeAbort(2, 1))
		}
		return err
	}
	s.deadline(a)
	if typ != pduAssociateRQ {
		writePDU(a.c, pduAbort, encodeAbort(2, 2))
		return protoErr("first PDU is of type 0x%02x, not A-ASSOCIATE-RQ", typ)
	}
	rq, err := parseAssociateRQ(body)
	if err != nil {
		if strings.Contains(err.Error(), "protocol version") {
			writePDU(a.c, pduAssociateRJ, encodeReject(1, rjSourceACSE, rjProtocolVersion))
		} else {
			writePDU(a.c, pduAbort, encodeAbort(2, 6))
		}
		return err
	}
	a.rq = rq
	reject := func(reason byte, format string, args ...any) error {
		writePDU(a.c, pduAssociateRJ, encodeReject(1, rjSourceUser, reason))
		return fmt.Errorf("dimse: "+format, args...)
	}
	if rq.appContext != appContext {
		return reject(rjAppContextUnsupported, "application context %q is not the DICOM one", rq.appContext)
	}
	if rq.calledAE != s.cfg.AETitle {
		return reject(rjCalledAE, "called AE title %q is not %q", rq.calledAE, s.cfg.AETitle)
	}
	if len(s.cfg.AllowedCallingAEs) > 0 && !slices.Contains(s.cfg.AllowedCallingAEs, rq.callingAE) {
		return reject(rjCallingAE, "calling AE title %q is not allowed", rq.callingAE)
	}
	if !s.promote(st) {
		writePDU(a.c, pduAssociateRJ, encodeReject(2, rjSourcePresentation, rjLocalLimit))
		return fmt.Errorf("dimse: association limit reached (%d in all, %d per address)",
			s.cfg.MaxAssociations, s.cfg.MaxAssociationsPerAddress)
	}
	a.accepted, a.abstract = map[byte]contextResult{}, map[byte]string{}
	var results []contextResult
	for _, pc := range rq.contexts {
		res := contextResult{id: pc.id, result: 3}
		if pc.abstract == VerificationSOPClass || slices.Contains(s.cfg.SOPClasses, pc.abstract) {
			// The proposer's order wins among the syntaxes we accept, so
			// a compressed file proposed first is sent as it is rather
			// than converted by the sender.
			res.result = 4
			for _, ts := range pc.syntaxes {
				if slices.Contains(s.cfg.TransferSyntaxes, ts) {
					res.result, res.syntax = 0, ts
					break
				}
			}
		}
		if res.result == 0 {
			a.accepted[pc.id] = res
			a.abstract[pc.id] = pc.abstract
		} else {
			a.log.Info().Str("abstract", pc.abstract).Strs("syntaxes", pc.syntaxes).Int("result", int(res.result)).
				Msg("presentation context rejected")
		}
		results = append(results, res)
	}
	a.peerMax = rq.maxLength
	return writePDU(a.c, pduAssociateAC, encodeAssociateAC(rq, results, s.cfg.MaxPDULength, ImplementationClassUID, ImplementationVersion))
}

// message is a reassembled DIMSE message.
type message struct {
	context byte
	cmd     *command
	data    []byte
}

// loop reads messages until release or abort.
func (s *Server) loop(a *assoc) error {
	var cur *message
	var cmdBuf, dataBuf []byte
	for {
		s.deadline(a)
		typ, body, err := readPDUFunc(a.r, s.cfg.MaxPDULength, s.bodyDeadline(a))
		if err != nil {
			if errors.Is(err, io.EOF) && cur == nil {
				return errors.New("dimse: peer closed the connection without releasing")
			}
			return err
		}
		switch typ {
		case pduReleaseRQ:
			if cur != nil {
				return protoErr("release requested in the middle of a message")
			}
			return writePDU(a.c, pduReleaseRP, []byte{0, 0, 0, 0})
		case pduAbort:
			return errors.New("dimse: peer aborted the association")
		case pduPData:
		default:
			return protoErr("unexpected PDU type 0x%02x during the association", typ)
		}
		pdvs, err := parsePData(body)
		if err != nil {
			return err
		}
		for _, p := range pdvs {
			if _, ok := a.accepted[p.context]; !ok {
				return protoErr("PDV on presentation context %d, which was not accepted", p.context)
			}
			if cur == nil {
				cur = &message{context: p.context}
			}
			if p.context != cur.context {
				return protoErr("PDV on context %d inside a message on context %d", p.context, cur.context)
			}
			if p.command {
				if cur.cmd != nil {
					return protoErr("command fragment after the command set was complete")
				}
				if len(cmdBuf)+len(p.data) > maxCommandBytes {
					return protoErr("command set over %d bytes", maxCommandBytes)
				}
				cmdBuf = append(cmdBuf, p.data...)
				if !p.last {
					continue
				}
				if cur.cmd, err = parseCommand(cmdBuf); err != nil {
					return err
				}
				cmdBuf = nil
				if cur.cmd.hasDataSet {
					continue
				}
			} else {
				if cur.cmd == nil || !cur.cmd.hasDataSet {
					return protoErr("data set fragment without a command announcing one")
				}
				if len(dataBuf)+len(p.data) > s.cfg.MaxDataSetBytes {
					return protoErr("data set of %s over the %d-byte limit", cur.cmd.sopUID, s.cfg.MaxDataSetBytes)
				}
				dataBuf = append(dataBuf, p.data...)
				if !p.last {
					continue
				}
				cur.data, dataBuf = dataBuf, nil
			}
			if err := s.dispatch(a, cur); err != nil {
				return err
			}
			cur = nil
		}
	}
}

func (s *Server) dispatch(a *assoc, m *message) error {
	rsp := &command{respondingTo: m.cmd.messageID, sopClass: m.cmd.sopClass, sopUID: m.cmd.sopUID}
	switch m.cmd.field {
	case cEchoRQ:
		rsp.field, rsp.status = cEchoRSP, StatusSuccess
		if rsp.sopClass == "" {
			rsp.sopClass = VerificationSOPClass
		}
	case cStoreRQ:
		rsp.field = cStoreRSP
		rsp.status, rsp.errorComment = s.store(a, m)
	default:
		rsp.field, rsp.status = m.cmd.field|0x8000, StatusUnrecognizedOp
		rsp.errorComment = fmt.Sprintf("command 0x%04x is not supported", m.cmd.field)
	}
	s.deadline(a)
	return writePData(a.c, m.context, true, rsp.encode(), a.peerMax)
}

func (s *Server) store(a *assoc, m *message) (uint16, string) {
	abstract := a.abstract[m.context]
	if m.cmd.sopClass != abstract {
		return StatusDataSetMismatch, fmt.Sprintf("SOP class %s sent on a %s context", m.cmd.sopClass, abstract)
	}
	if abstract == VerificationSOPClass {
		return StatusSOPClassNotSupp, "C-STORE on the Verification context"
	}
	if m.cmd.sopUID == "" {
		return StatusCannotUnderstand, "no AffectedSOPInstanceUID"
	}
	req := &StoreRequest{
		CallingAE: a.rq.callingAE, CalledAE: a.rq.calledAE,
		SOPClassUID: m.cmd.sopClass, SOPInstanceUID: m.cmd.sopUID,
		TransferSyntax: a.accepted[m.context].syntax, DataSet: m.data,
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HandlerTimeout)
	defer cancel()
	start := time.Now()
	status, err := s.safeHandle(ctx, req)
	ev := a.log.Info()
	if status != StatusSuccess {
		ev = a.log.Warn().Err(err)
	}
	ev.Str("instance", req.SOPInstanceUID).Int("bytes", len(req.DataSet)).Uint16("status", status).
		Dur("took", time.Since(start)).Msg("C-STORE")
	if err != nil {
		return status, err.Error()
	}
	return status, ""
}

func (s *Server) safeHandle(ctx context.Context, r *StoreRequest) (status uint16, err error) {
	defer func() {
		if p := recover(); p != nil {
			status, err = statusProcessingFailure, fmt.Errorf("dimse: store handler panicked: %v", p)
		}
	}()
	return s.handler(ctx, r)
}
