// Package dicomweb receives CT instances from a PACS over DICOMweb
// (STOW-RS, PS3.18 §10.5) and holds the Acceptor that every receiver
// (STOW-RS here, C-STORE in ingest/dimse, the watched folder in
// ingest/watch) hands instances to; it also has a STOW-RS client for
// sending results (DICOM SEG) back.
//
// How a received instance enters the pipeline: the Acceptor decodes it in
// memory with ingest/dicomio.Decode (which rejects hostile or unsupported
// input with typed errors before allocating from any declared length) and
// publishes one Slice message per frame on lung.slices.raw, waiting for
// JetStream's acknowledgement of each. Only then does a receiver answer
// success (HTTP 200, DIMSE status 0000), so an accepted instance is stored
// in the RAW stream, replicated like every other stage boundary, and no
// local spool folder has to survive or be shared between hosts. Each slice
// is published with the Nats-Msg-Id "<replay>|<SOPInstanceUID>[-fNNN]|ingest|",
// so a sender retrying an instance within the stream's dedupe window does
// not make it twice. A rejected instance is reported on
// lung.errors.ingest.<replay> and to the sender, with a DICOM failure
// reason (see Rejection).
package dicomweb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// StageName is the stage name receivers publish and report errors under.
const StageName = "ingest"

// SOP classes accepted.
const (
	CTImageStorage                 = "1.2.840.10008.5.1.4.1.1.2"
	EnhancedCTImageStorage         = "1.2.840.10008.5.1.4.1.1.2.1"
	LegacyConvertedEnhancedCTImage = "1.2.840.10008.5.1.4.1.1.2.2"
)

const (
	defaultPublishTimeout = 30 * time.Second
)

// AcceptedSOPClasses are the storage SOP classes an Acceptor takes.
var AcceptedSOPClasses = []string{CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImage}

// Failure reasons (PS3.18 Table 10.5.3-3 and PS3.7 Annex C), used both as
// STOW-RS FailureReason and as C-STORE status.
const (
	ReasonOutOfResources     uint16 = 0xA700 // declared sizes beyond the limits
	ReasonDataSetMismatch    uint16 = 0xA900 // not a CT image, or the wrong study
	ReasonCannotUnderstand   uint16 = 0xC000 // malformed, truncated, unsupported pixel format
	ReasonSyntaxNotSupported uint16 = 0xC122 // compressed or unknown transfer syntax
	ReasonSOPClassNotSupp    uint16 = 0x0122 // SOP class other than CT
	ReasonProcessingFailure  uint16 = 0x0110 // the bus failed: the sender may retry
)

// Rejection is the error an Acceptor returns for an instance it did not
// store: Reason is the DICOM failure reason, Err the cause. Permanent
// rejections are about the data; others (the bus failing) may succeed
// when the sender retries.
type Rejection struct {
	Reason    uint16
	Permanent bool
	Err       error
}

func (r *Rejection) Error() string { return r.Err.Error() }

// Unwrap returns the cause.
func (r *Rejection) Unwrap() error { return r.Err }

// FailureReason returns the DICOM failure reason of an error returned by
// Accept: 0 for nil, the Rejection's reason, else 0x0110 (processing
// failure).
func FailureReason(err error) uint16 {
	if err == nil {
		return 0
	}
	var r *Rejection
	if errors.As(err, &r) {
		return r.Reason
	}
	return ReasonProcessingFailure
}

// Acceptor decodes received instances and publishes their frames on
// lung.slices.raw. Safe for concurrent use once set up.
type Acceptor struct {
	JS jetstream.JetStream
	// Models are the model names every received slice is segmented with
	// (already resolved: no "all").
	Models []string
	// ReplayID of the published slices; "" publishes them as live
	// (bus.LiveReplay).
	ReplayID string
	// Source is SliceMeta.Source: "dicomweb", "dimse", "watch".
	Source string
	// PublishTimeout bounds the wait for each acknowledgement (default
	// 30 s).
	PublishTimeout time.Duration
	// Hook, if set, is called after each publish (for metrics).
	Hook func(stage, subject string)
	Log  zerolog.Logger
	// Studies, when set, keeps each study's patient and study attributes
	// (key: StudyInstanceUID) for the SEG results (score/seg.Collector).
	Studies jetstream.KeyValue

	// ConsumerWait is how long an instance waits for a consumer of RAW
	// (a pipeline still starting) before it is refused (default 10 s).
	ConsumerWait time.Duration
}

// ErrNoConsumer means nothing consumes lung.slices.raw: RAW keeps a slice
// only for its consumers (interest retention), so one published now would
// be dropped. The instance is refused (a transient failure the sender
// retries) instead of being accepted and lost.
var ErrNoConsumer = errors.New("no pipeline stage consumes lung.slices.raw yet (start `lungseg run`/the stages, or `lungseg streams apply` to create their consumers)")

// waitConsumer returns nil once RAW has a consumer, waiting at most
// ConsumerWait for one (bus.Backlog's wait, on RAW alone and without a
// byte bound); ErrNoConsumer otherwise.
func (a *Acceptor) waitConsumer(ctx context.Context) error {
	wait := a.ConsumerWait
	if wait <= 0 {
		wait = 10 * time.Second
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	b := &bus.Backlog{JS: a.JS, Streams: []string{bus.StreamRaw}, MaxBytes: math.MaxInt64, Poll: 200 * time.Millisecond}
	err := b.Wait(wctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return ErrNoConsumer
	}
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("reading the state of %s: %w", bus.StreamRaw, err)
	}
	return err
}

// Instance describes an accepted instance.
type Instance struct {
	FileMeta
	StudyUID, SeriesUID string
	// SliceIDs are the ids of the published slices, one per frame.
	SliceIDs []string
}

func reject(reason uint16, err error) *Rejection {
	return &Rejection{Reason: reason, Permanent: true, Err: err}
}

// classify maps a dicomio error to a rejection.
func classify(err error) *Rejection {
	switch {
	case errors.Is(err, dicomio.ErrCompressed):
		return reject(ReasonSyntaxNotSupported, err)
	case errors.Is(err, dicomio.ErrTooLarge):
		return reject(ReasonOutOfResources, err)
	case errors.Is(err, dicomio.ErrNotCT), errors.Is(err, dicomio.ErrNoPixelData):
		return reject(ReasonDataSetMismatch, err)
	}
	return reject(ReasonCannotUnderstand, err)
}

// Check decodes a Part 10 instance without publishing it: the checks
// Accept makes before publishing (SOP class, study, transfer syntax,
// pixel data), with the same Rejection errors. wantStudy, when not empty,
// is the StudyInstanceUID the instance must have.
func Check(name string, b []byte, wantStudy string) (FileMeta, *dicomio.Image, error) {
	fm, err := ReadFileMeta(b)
	if err != nil {
		return fm, nil, reject(ReasonCannotUnderstand, fmt.Errorf("%s: %w", name, err))
	}
	if fm.SOPClassUID != "" && !isCT(fm.SOPClassUID) {
		return fm, nil, reject(ReasonSOPClassNotSupp, fmt.Errorf("dicomweb: %s: SOP class %s is not a CT image storage class (want one of %s)",
			name, fm.SOPClassUID, strings.Join(AcceptedSOPClasses, ", ")))
	}
	img, err := dicomio.Decode(name, b)
	if err != nil {
		return fm, nil, classify(err)
	}
	if img.InstanceUID == "" {
		return fm, nil, reject(ReasonDataSetMismatch, fmt.Errorf("dicomweb: %s: no SOPInstanceUID", name))
	}
	if fm.SOPInstanceUID != "" && fm.SOPInstanceUID != img.InstanceUID {
		return fm, nil, reject(ReasonDataSetMismatch, fmt.Errorf("dicomweb: %s: MediaStorageSOPInstanceUID %s differs from SOPInstanceUID %s",
			name, fm.SOPInstanceUID, img.InstanceUID))
	}
	fm.SOPInstanceUID = img.InstanceUID
	if wantStudy != "" && img.StudyUID != wantStudy {
		return fm, nil, reject(ReasonDataSetMismatch, fmt.Errorf("dicomweb: %s: StudyInstanceUID %s differs from the study %s of the request",
			name, img.StudyUID, wantStudy))
	}
	return fm, img, nil
}

func isCT(sopClass string) bool {
	for _, c := range AcceptedSOPClasses {
		if c == sopClass {
			return true
		}
	}
	return false
}

// Accept decodes one Part 10 instance (name is used in errors and the
// error event) and publishes its frames, returning after JetStream has
// acknowledged every one. wantStudy, when not empty, is the study the
// instance must belong to. A rejected instance is also reported on the
// errors subject. The error is a *Rejection.
func (a *Acceptor) Accept(ctx context.Context, name string, b []byte, wantStudy string) (*Instance, error) {
	fm, img, err := Check(name, b, wantStudy)
	if err != nil {
		a.report(ctx, fm.SOPInstanceUID, name, err)
		return nil, err
	}
	if err := a.waitConsumer(ctx); err != nil {
		rej := &Rejection{Reason: ReasonOutOfResources, Err: fmt.Errorf("dicomweb: %s not accepted: %w", name, err)}
		a.report(ctx, fm.SOPInstanceUID, name, rej)
		return nil, rej
	}
	inst := &Instance{FileMeta: fm, StudyUID: img.StudyUID, SeriesUID: img.SeriesUID}
	now := time.Now().UnixNano()
	for i, fr := range img.Frames {
		id := img.InstanceUID
		if img.MultiFrame {
			id = fmt.Sprintf("%s-f%03d", id, i+1)
		}
		meta := &lungsegv1.SliceMeta{
			Id: id, ReplayId: a.ReplayID, Source: a.Source,
			StudyUid: img.StudyUID, SeriesUid: img.SeriesUID, InstanceUid: img.InstanceUID,
			Frame: int32(i + 1), SpacingRowMm: fr.SpacingRowMm, SpacingColMm: fr.SpacingColMm,
			SpacingAssumed: fr.SpacingAssumed, SlicePosition: fr.Position,
			Models: a.Models, IngestedUnixNano: now,
		}
		sl, err := ingest.SliceMessage(ingest.Item{Meta: meta, HU: fr.HU})
		if err != nil {
			rej := reject(ReasonCannotUnderstand, fmt.Errorf("dicomweb: %s frame %d: %w", name, i+1, err))
			a.report(ctx, id, name, rej)
			return nil, rej
		}
		data, err := proto.Marshal(sl)
		if err != nil {
			return nil, &Rejection{Reason: ReasonProcessingFailure, Err: err}
		}
		// A frame over the message limit (over about 700×700) goes by
		// object reference: stage.Publish stores it in the pixel bucket.
		if err := a.publish(ctx, stage.Out{Subject: bus.SubjRaw, Data: data, SliceID: id, ReplayID: a.ReplayID}); err != nil {
			rej := &Rejection{Reason: ReasonOutOfResources, Err: fmt.Errorf("dicomweb: storing %s: %w", name, err)}
			a.report(ctx, id, name, rej)
			return nil, rej
		}
		inst.SliceIDs = append(inst.SliceIDs, id)
	}
	if a.Studies != nil && img.StudyUID != "" {
		b, _ := json.Marshal(img.Study)
		if _, err := a.Studies.Put(ctx, img.StudyUID, b); err != nil {
			return nil, &Rejection{Reason: ReasonOutOfResources, Err: fmt.Errorf("dicomweb: storing study attributes of %s: %w", name, err)}
		}
	}
	a.Log.Debug().Str("instance", img.InstanceUID).Str("series", img.SeriesUID).Int("frames", len(img.Frames)).Msg("instance accepted")
	return inst, nil
}

func (a *Acceptor) publish(ctx context.Context, o stage.Out) error {
	t := a.PublishTimeout
	if t <= 0 {
		t = defaultPublishTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	return stage.Publish(ctx, a.JS, StageName, o, a.Hook)
}

// report publishes a rejection on the errors subject; a failure to do so
// is logged, not returned, since the sender gets the rejection anyway.
func (a *Acceptor) report(ctx context.Context, id, name string, err error) {
	if id == "" {
		id = name
	}
	a.Log.Warn().Err(err).Str("instance", id).Msg("instance rejected")
	if a.JS == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if perr := stage.PublishError(ctx, a.JS, StageName, stage.Failure{SliceID: id, ReplayID: a.ReplayID, Err: err}, bus.SubjRaw, true); perr != nil {
		a.Log.Error().Err(perr).Str("instance", id).Msg("reporting a rejected instance")
	}
}
