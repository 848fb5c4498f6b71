// Package objref carries message bodies too large for one NATS message
// through the JetStream Object Store. Every hop of the pipeline uses it:
// stage.Publish stores a body over Limit in the pixel bucket
// (bus.PixelsBucket) and publishes a small reference in its place; the
// stage runner and the pipeline's other readers (replay, viewer, tail)
// resolve the reference before decoding, so a 4096×4096 slice with its
// mask, lung field, prediction and probabilities travels like a small
// one.
//
// A reference body is Magic followed by a protobuf ObjectRef (bucket, key,
// sha256, size). No protobuf or JSON message starts with a zero byte, so a
// reader tells the two apart by the first bytes alone, and a reader that
// does not resolve references fails to decode rather than misread.
//
// Each put is an object of its own ("msg/<hash of the name>/<unique id>"),
// never overwritten, so an object that a stored message references keeps
// its bytes and no two messages share one. Objects are removed only when
// nothing can still read them: the stage runner deletes the object of a
// publish that the stream deduped (its message is the earlier one, with
// its own object), and, on the work streams (interest retention), the
// object of a message that has left the stream because every consumer
// acknowledged it. The rest (scores and findings kept for inspection,
// messages that failed and may be re-driven from the DLQ, a publish whose
// outcome is unknown) expire with the bucket's TTL, the streams' max age.
package objref

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/lungseg/lungseg/pkg/bus"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Limit is the largest body sent inline: the 1 MiB payload limit less
// room for the headers (slice id, replay, model, dedupe id).
const Limit = bus.MaxPayload - 16<<10

// MaxObject bounds the object a reference may name (a 4096² slice's int16
// HU is 32 MiB; a score of a 4096² slice predicted everywhere carries 64
// MiB of probabilities), so a forged reference cannot make a reader
// allocate without bound.
const MaxObject = 256 << 20

// Header is set on a published message whose body is a reference, to
// "<bucket>/<key>", for people reading the stream; readers go by the body.
const Header = "Lung-Object"

// Magic starts every reference body.
var Magic = []byte("\x00lungseg-objref\n")

// Errors. ErrMissing, ErrDigest and ErrBadRef are permanent (no retry can
// fix them); a failed fetch is returned wrapped as is and may be retried.
var (
	ErrBadRef  = errors.New("objref: malformed object reference")
	ErrMissing = errors.New("objref: referenced object is gone")
	ErrDigest  = errors.New("objref: object fails its sha256")
	ErrNoStore = errors.New("objref: no object store")
	// ErrTooLarge is a body over MaxObject.
	ErrTooLarge = errors.New("objref: body over the object limit")
)

// IsRef reports whether body is a reference.
func IsRef(body []byte) bool { return bytes.HasPrefix(body, Magic) }

// IsPermanent reports whether a Resolve error is about the reference
// itself (malformed, gone, corrupt) rather than a failure to reach it.
func IsPermanent(err error) bool {
	return errors.Is(err, ErrBadRef) || errors.Is(err, ErrMissing) || errors.Is(err, ErrDigest)
}

// Store opens the pixel bucket on js.
func Store(ctx context.Context, js jetstream.JetStream) (jetstream.ObjectStore, error) {
	if js == nil {
		return nil, ErrNoStore
	}
	st, err := js.ObjectStore(ctx, bus.PixelsBucket)
	if err != nil {
		return nil, fmt.Errorf("%w: opening bucket %s: %w", ErrNoStore, bus.PixelsBucket, err)
	}
	return st, nil
}

// Key returns a new object key for a body published under name (a
// dedupe id, a KV key): "msg/<hash of name>/<unique id>". Every put gets
// its own object, so that no two messages share one and releasing one
// message's object never takes another's.
func Key(name string) string {
	n := sha256.Sum256([]byte(name))
	u := make([]byte, 12)
	_, _ = rand.Read(u)
	return KeyPrefix + hex.EncodeToString(n[:8]) + "/" + hex.EncodeToString(u)
}

// KeyPrefix starts the keys of the objects Offload stores (the pixels
// ingest and preprocess store themselves are named otherwise).
const KeyPrefix = "msg/"

// Offload returns body unchanged when it is at most Limit bytes, else
// stores it in the pixel bucket under Key(name, body) and returns a
// reference body and the reference. Safe for concurrent use.
func Offload(ctx context.Context, js jetstream.JetStream, name string, body []byte) ([]byte, *lungsegv1.ObjectRef, error) {
	if len(body) <= Limit {
		return body, nil, nil
	}
	if len(body) > MaxObject {
		return nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), MaxObject)
	}
	st, err := Store(ctx, js)
	if err != nil {
		return nil, nil, fmt.Errorf("objref: body of %d bytes is over the %d-byte message limit: %w", len(body), Limit, err)
	}
	return OffloadTo(ctx, st, name, body)
}

// OffloadTo is Offload with an open bucket; it stores body whatever its
// size.
func OffloadTo(ctx context.Context, st jetstream.ObjectStore, name string, body []byte) ([]byte, *lungsegv1.ObjectRef, error) {
	sum := sha256.Sum256(body)
	ref := &lungsegv1.ObjectRef{Bucket: bus.PixelsBucket, Key: Key(name), Sha256: hex.EncodeToString(sum[:]), Size: int64(len(body))}
	if _, err := st.PutBytes(ctx, ref.Key, body); err != nil {
		return nil, nil, fmt.Errorf("objref: storing %d bytes as %s: %w", len(body), ref.Key, err)
	}
	rb, err := proto.Marshal(ref)
	if err != nil {
		return nil, nil, err
	}
	return append(append(make([]byte, 0, len(Magic)+len(rb)), Magic...), rb...), ref, nil
}

// Parse decodes a reference body.
func Parse(body []byte) (*lungsegv1.ObjectRef, error) {
	if !IsRef(body) {
		return nil, fmt.Errorf("%w: no magic", ErrBadRef)
	}
	var ref lungsegv1.ObjectRef
	if err := proto.Unmarshal(body[len(Magic):], &ref); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRef, err)
	}
	if ref.Bucket != bus.PixelsBucket || ref.Key == "" || ref.Size <= 0 || ref.Size > MaxObject || len(ref.Sha256) != 64 {
		return nil, fmt.Errorf("%w: bucket %q, key %q, %d bytes", ErrBadRef, ref.Bucket, ref.Key, ref.Size)
	}
	return &ref, nil
}

// Resolve returns body itself when it is not a reference, else the
// referenced object, checked against the reference's size and sha256.
// Safe for concurrent use.
func Resolve(ctx context.Context, js jetstream.JetStream, body []byte) ([]byte, error) {
	if !IsRef(body) {
		return body, nil
	}
	ref, err := Parse(body)
	if err != nil {
		return nil, err
	}
	st, err := Store(ctx, js)
	if err != nil {
		return nil, err
	}
	return Fetch(ctx, st, ref)
}

// Fetch reads and checks the object ref names from an open bucket.
func Fetch(ctx context.Context, st jetstream.ObjectStore, ref *lungsegv1.ObjectRef) ([]byte, error) {
	info, err := st.GetInfo(ctx, ref.Key)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrMissing, ref.Key)
	}
	if err != nil {
		return nil, fmt.Errorf("objref: fetching %s: %w", ref.Key, err)
	}
	if int64(info.Size) != ref.Size {
		return nil, fmt.Errorf("%w: %s holds %d bytes, the reference says %d", ErrDigest, ref.Key, info.Size, ref.Size)
	}
	b, err := st.GetBytes(ctx, ref.Key)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrMissing, ref.Key)
	}
	if err != nil {
		return nil, fmt.Errorf("objref: fetching %s: %w", ref.Key, err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != ref.Sha256 {
		return nil, fmt.Errorf("%w: %s", ErrDigest, ref.Key)
	}
	return b, nil
}

// Delete removes the object ref names; one already gone is no error.
func Delete(ctx context.Context, js jetstream.JetStream, ref *lungsegv1.ObjectRef) error {
	if ref == nil || !strings.HasPrefix(ref.Key, KeyPrefix) {
		return nil // only objects Offload stored
	}
	st, err := Store(ctx, js)
	if err != nil {
		return err
	}
	if err := st.Delete(ctx, ref.Key); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("objref: deleting %s: %w", ref.Key, err)
	}
	return nil
}
