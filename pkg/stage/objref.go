package stage

import (
	"context"

	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// offload puts a body over objref.Limit in the pixel bucket and leaves a
// reference in msg in its place (see package objref), so that no hop
// fails with "maximum payload exceeded" on a large slice.
func offload(ctx context.Context, js jetstream.JetStream, id string, msg *nats.Msg) error {
	data, ref, err := objref.Offload(ctx, js, id, msg.Data)
	if err != nil {
		return err
	}
	msg.Data = data
	if ref != nil {
		msg.Header.Set(objref.Header, ref.Bucket+"/"+ref.Key)
	}
	return nil
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
