package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Resolver expands a model selection ("all", names) into model names.
type Resolver interface {
	Resolve(names []string) ([]string, error)
}

// Stage is the ingest processor: it consumes IngestJobs, publishes each
// slice of the input on lung.slices.raw, reports bad slices and files on
// the errors subject, and ends with an IngestDone event. Safe for
// concurrent use. Each job is read by one walk that lets the formats
// reuse pixel memory from slice to slice (Format.Reusing: a DICOM series
// is decoded into one plane), since a slice's pixels are copied into its
// message before the next is read.
type Stage struct {
	Formats  []Format
	Models   Resolver
	Defaults []string
	// Backlog, when set, is waited on before each slice is read, so that
	// ingest reads no further ahead than the pipeline's bound.
	Backlog Backlog
	// Progress, when set, records after every slice how far each job has
	// been read (bus.IngestProgressBucket), so that a job redelivered
	// after a crash resumes where it was instead of publishing again what
	// may have left the dedupe window.
	Progress jetstream.KeyValue
	// Objects holds the pixels of slices too large for one message, which
	// preprocess hands on to cascades by the same reference; with nil,
	// such a slice still travels, stored whole by stage.Publish
	// (pkg/objref).
	Objects jetstream.ObjectStore
	// Roots, when set, are the only folders jobs may read under; a job
	// naming another path is reported as a failure on the errors subject
	// (ErrOutsideRoots) and read no further.
	Roots *Roots
}

// DefaultSpacingMm is the pixel spacing assumed for inputs that carry none
// (the pickles); SliceMeta.SpacingAssumed marks it.
const DefaultSpacingMm = 0.7

// maxSlicePayload leaves room for headers under the 1 MiB limit.
const maxSlicePayload = bus.MaxPayload - 16<<10

func metaID(id string) *lungsegv1.SliceMeta { return &lungsegv1.SliceMeta{Id: id} }

// SliceMessage builds the raw-slice message of an item. The message
// holds copies of the pixels and the mask (it.HU, it.Mask): they may be
// reused once SliceMessage returns. It keeps it.Meta.
func SliceMessage(it Item) (*lungsegv1.Slice, error) {
	if it.HU == nil {
		return nil, fmt.Errorf("ingest: slice %s has no pixels", it.Meta.GetId())
	}
	if err := imgx.CheckSize(it.HU.Rows, it.HU.Cols); err != nil {
		return nil, err
	}
	if len(it.HU.Pix) != it.HU.Rows*it.HU.Cols {
		return nil, fmt.Errorf("%w: %d pixels for %d×%d", imgx.ErrShape, len(it.HU.Pix), it.HU.Rows, it.HU.Cols)
	}
	it.Meta.Rows, it.Meta.Cols = int32(it.HU.Rows), int32(it.HU.Cols)
	if it.Meta.SpacingRowMm <= 0 || it.Meta.SpacingColMm <= 0 {
		it.Meta.SpacingRowMm, it.Meta.SpacingColMm, it.Meta.SpacingAssumed = DefaultSpacingMm, DefaultSpacingMm, true
	}
	s := &lungsegv1.Slice{Meta: it.Meta, Hu: it.HU.EncodeInt16()}
	if it.Mask != nil {
		if it.Mask.Rows != it.HU.Rows || it.Mask.Cols != it.HU.Cols {
			return nil, fmt.Errorf("ingest: slice %s: mask is %d×%d but image is %d×%d", it.Meta.Id, it.Mask.Rows, it.Mask.Cols, it.HU.Rows, it.HU.Cols)
		}
		s.MaskBits, s.HasMask = it.Mask.PackBits(), true
	}
	return s, nil
}

// offload puts the slice's pixels in the object store and returns the
// message with a reference in their place.
func (s *Stage) offload(ctx context.Context, sl *lungsegv1.Slice) ([]byte, error) {
	key := sl.Meta.ReplayId + "/" + sl.Meta.Id
	sum := sha256.Sum256(sl.Hu)
	if _, err := s.Objects.PutBytes(ctx, key, sl.Hu); err != nil {
		return nil, fmt.Errorf("ingest: storing pixels of %s: %w", sl.Meta.Id, err)
	}
	sl.HuRef = &lungsegv1.ObjectRef{Bucket: bus.PixelsBucket, Key: key, Sha256: hex.EncodeToString(sum[:]), Size: int64(len(sl.Hu))}
	sl.Hu = nil
	return proto.Marshal(sl)
}

// InputSeriesUID is the series UID a job with series_per_input gives the
// slices of its input that have none of their own:
// "input:<job index>:<file name>".
func InputSeriesUID(job *lungsegv1.IngestJob) string {
	return fmt.Sprintf("input:%d:%s", job.JobIndex, filepath.Base(job.Path))
}

// Process implements stage.Processor.
func (s *Stage) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	var job lungsegv1.IngestJob
	if err := proto.Unmarshal(m.Data, &job); err != nil {
		return stage.Permanentf("ingest: decoding job: %w", err)
	}
	names := job.Models
	if len(names) == 0 {
		names = s.Defaults
	}
	models, err := s.Models.Resolve(names)
	if err != nil {
		return stage.Permanent(err)
	}
	if len(models) == 0 {
		return stage.Permanentf("ingest: job %s selects no model", job.Path)
	}
	done := &lungsegv1.IngestDone{ReplayId: job.ReplayId, Path: job.Path, JobIndex: job.JobIndex, Models: models}
	// Ids drop the extension, so two files of one folder can share one
	// (a.dcm and a_image.png): later ones get "~2", "~3"... so that no
	// slice is deduped away as a repeat of another.
	seen := map[string]int{}
	fl, err := s.startJob(ctx, &job, done)
	if err != nil {
		return err
	}
	// The walk reuses pixel memory from one item to the next (walker):
	// this fn must keep no it.HU or it.Mask once it returns. SliceMessage
	// copies them into the message; nothing else here holds them.
	err = s.walker(job.Path, job.MasksDir)(ctx, s.Formats, job.Path, job.MasksDir, func(it Item) error {
		if it.Meta == nil {
			it.Meta = metaID("?")
		}
		it.Meta.Id = job.IdPrefix + it.Meta.Id
		if n := seen[it.Meta.Id]; n > 0 {
			seen[it.Meta.Id] = n + 1
			it.Meta.Id = fmt.Sprintf("%s~%d", it.Meta.Id, n+1)
		} else {
			seen[it.Meta.Id] = 1
		}
		it.Meta.ReplayId = job.ReplayId
		if job.SeriesPerInput && it.Meta.SeriesUid == "" {
			it.Meta.SeriesUid = InputSeriesUID(&job)
		}
		if skip, err := fl.next(ctx, done); skip || err != nil {
			return err // published before a crash, or stopped waiting
		}
		fail := func(err error) error {
			done.Rejected++
			return e.Fail(ctx, stage.Failure{SliceID: it.Meta.Id, ReplayID: job.ReplayId, Err: err})
		}
		if it.Err != nil {
			return fail(it.Err)
		}
		it.Meta.Models = models
		for _, w := range it.Meta.Warnings { // also in the replay report's slice entry
			m.Log.Warn().Str("slice", it.Meta.Id).Str("path", job.Path).Msg(w)
		}
		it.Meta.IngestedUnixNano = time.Now().UnixNano()
		sl, err := SliceMessage(it)
		if err != nil {
			return fail(err)
		}
		b, err := proto.Marshal(sl)
		if err != nil {
			return err
		}
		// Pixels over the limit go to the object store by themselves
		// (preprocess hands the reference on to cascades); whatever is
		// still over it (a 4096² mask) is stored whole by stage.Publish.
		if len(b) > maxSlicePayload && s.Objects != nil {
			if b, err = s.offload(ctx, sl); err != nil {
				return s.failPublish(ctx, fail, job.Path, it.Meta.Id, err)
			}
		}
		if err := e.Emit(ctx, stage.Out{Subject: bus.SubjRaw, Data: b, SliceID: it.Meta.Id, ReplayID: job.ReplayId}); err != nil {
			return s.failPublish(ctx, fail, job.Path, it.Meta.Id, err)
		}
		if s.Backlog != nil {
			s.Backlog.Sent(len(b))
		}
		done.Slices++
		return nil
	})
	if err != nil {
		return fmt.Errorf("ingest: reading %s: %w", job.Path, err)
	}
	if err := fl.finish(ctx, done); err != nil {
		return err
	}
	b, err := proto.Marshal(done)
	if err != nil {
		return err
	}
	m.Log.Info().Str("path", job.Path).Int64("slices", done.Slices).Int64("rejected", done.Rejected).Msg("ingest job done")
	return e.Emit(ctx, stage.Out{Subject: bus.IngestedSubject(job.ReplayId), Data: b, ReplayID: job.ReplayId,
		MsgID: bus.MsgID(job.ReplayId, fmt.Sprintf("job-%d", job.JobIndex), "ingest-done", "")})
}

// failPublish handles a slice that could not be published (stored or
// sent). A failure that is the slice's own (over the payload or object
// limit) is reported as a failure of that slice, naming the input, and the
// rest of the job goes on; the replay counts it. A failure of the bus (a
// timeout, a full stream) fails the job with the input named, to be
// retried from the start, the slices already published being deduped.
func (s *Stage) failPublish(ctx context.Context, fail func(error) error, path, id string, err error) error {
	err = fmt.Errorf("ingest: publishing slice %s of %s: %w", id, path, err)
	if ctx.Err() != nil || !sliceFault(err) {
		return err
	}
	return fail(err)
}

// sliceFault reports whether a publish error is about the slice itself,
// so that retrying cannot help.
func sliceFault(err error) bool {
	return errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, objref.ErrTooLarge) || stage.IsPermanent(err)
}
