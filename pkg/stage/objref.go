package stage

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/objref"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// offload puts a body over objref.Limit in the pixel bucket, as an object
// of its own, and leaves a reference in msg in its place (see package
// objref), so that no hop fails with "maximum payload exceeded" on a
// large slice. It returns the reference, nil when the body stays inline.
func offload(ctx context.Context, js jetstream.JetStream, id string, msg *nats.Msg) (*lungsegv1.ObjectRef, error) {
	data, ref, err := objref.Offload(ctx, js, id, msg.Data)
	if err != nil {
		return nil, err
	}
	msg.Data = data
	if ref != nil {
		msg.Header.Set(objref.Header, ref.Bucket+"/"+ref.Key)
	}
	return ref, nil
}

// dropDuplicate deletes the object just stored for a publish that the
// stream deduped (a redelivered stage publishing again): the message kept
// is the first one, with its own object. After a failed publish the
// object is kept, since the message may have been stored all the same;
// the bucket's TTL removes it if not.
func dropDuplicate(ctx context.Context, js jetstream.JetStream, ref *lungsegv1.ObjectRef, ack *jetstream.PubAck) {
	if ref == nil || ack == nil || !ack.Duplicate {
		return
	}
	_ = objref.Delete(context.WithoutCancel(ctx), js, ref)
}

// resolve replaces a reference body with the object it names before the
// processor sees it. A reference that is malformed, gone or corrupt is a
// permanent failure; a fetch that fails is retried.
func (r *Runner) resolve(ctx context.Context, m *Msg) error {
	if !objref.IsRef(m.Data) {
		return nil
	}
	b, err := objref.Resolve(ctx, r.js, m.Data)
	if err != nil {
		if objref.IsPermanent(err) {
			return Permanent(err)
		}
		return err
	}
	m.Data = b
	return nil
}

// release deletes the object of a message just acknowledged, when the
// message came by reference on a work stream (bus.WorkStreams: interest
// retention) and has left the stream, that is when every consumer of the
// stream (other stages, a viewer) has acknowledged it: nothing can read
// the object any more. While any consumer still holds the message, or on
// the streams kept for inspection (scores, findings), the object stays
// until the bucket's TTL. A message that failed (terminated, perhaps kept
// in the DLQ) is never released here.
func (r *Runner) release(ctx context.Context, jm jetstream.Msg) {
	if !slices.Contains(bus.WorkStreams, r.cfg.Stream) || !objref.IsRef(jm.Data()) {
		return
	}
	ref, err := objref.Parse(jm.Data())
	if err != nil {
		return
	}
	md, err := jm.Metadata()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	st, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return
	}
	if _, err := st.GetMsg(ctx, md.Sequence.Stream); !errors.Is(err, jetstream.ErrMsgNotFound) {
		return // still held by another consumer, or unknown: keep it
	}
	if err := objref.Delete(ctx, r.js, ref); err != nil {
		r.log.Debug().Err(err).Str("object", ref.Key).Msg("releasing a consumed object")
	}
}
