package findings

import (
	"container/list"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// HUCache keeps the HU images of recent raw slices in memory, so that the
// findings stage can give each component its mean HU: neither Score nor
// ModelOutput carries HU. It is a stage.Processor for the RAW stream
// (lung.slices.raw) that emits nothing, and a HUSource.
//
// It is best effort: the cache is bounded (least recently used slices are
// dropped), starts empty after a restart, and holds only slices whose
// pixels were inline (not in the Object Store). A slice it does not hold
// gets hu_known=false, never a guessed value. Raw slices are published
// before preprocess, segment and score run, but the cache's consumer can
// lag behind the scores on a busy machine: after Follow, a miss waits
// until that consumer has handled every raw slice published before the
// miss (see HU). Safe for concurrent use.
type HUCache struct {
	max int64

	// Set by Follow: the consumer that fills the cache, and how long a
	// miss may wait for it.
	js      jetstream.JetStream
	stream  string
	durable string
	wait    time.Duration

	mu    sync.Mutex
	bytes int64
	ll    *list.List // front: most recent
	byKey map[string]*list.Element
}

type huEntry struct {
	key string
	hu  *imgx.HU
}

// HUStageName is the stage (and durable consumer) name of the runner
// that fills the pipeline's HU cache from the raw stream.
const HUStageName = "findings-hu"

// DefaultHUCacheBytes bounds the cache by default (1,024 slices of 512×512).
const DefaultHUCacheBytes = 512 << 20

// NewHUCache returns a cache holding at most maxBytes of pixels (default
// DefaultHUCacheBytes when ≤ 0).
func NewHUCache(maxBytes int64) *HUCache {
	if maxBytes <= 0 {
		maxBytes = DefaultHUCacheBytes
	}
	return &HUCache{max: maxBytes, ll: list.New(), byKey: map[string]*list.Element{}}
}

func huKey(m *lungsegv1.SliceMeta) string { return orLive(m.GetReplayId()) + "\x00" + m.GetId() }

// Put stores the HU image of a slice.
func (c *HUCache) Put(meta *lungsegv1.SliceMeta, hu *imgx.HU) {
	k := huKey(meta)
	size := int64(len(hu.Pix)) * 2
	if size > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[k]; ok {
		c.bytes -= int64(len(el.Value.(*huEntry).hu.Pix)) * 2
		c.ll.Remove(el)
	}
	c.byKey[k] = c.ll.PushFront(&huEntry{key: k, hu: hu})
	c.bytes += size
	for c.bytes > c.max {
		el := c.ll.Back()
		e := el.Value.(*huEntry)
		c.ll.Remove(el)
		delete(c.byKey, e.key)
		c.bytes -= int64(len(e.hu.Pix)) * 2
	}
}

// DefaultHUWait bounds how long a miss waits for the cache's consumer.
const DefaultHUWait = 10 * time.Second

// huPoll is how often a waiting miss asks for the consumer's state.
const huPoll = 5 * time.Millisecond

// Follow names the durable consumer on stream that fills the cache (the
// runner that has the cache as its Processor). A miss in HU then waits, at
// most wait (DefaultHUWait when ≤ 0), until that consumer's ack floor
// reaches the raw stream's last sequence as it was at the miss: every raw
// slice published before the miss has been cached or skipped, so a slice
// still missing is not coming (its pixels are in the Object Store, or it
// was evicted). Call before the cache is used.
func (c *HUCache) Follow(js jetstream.JetStream, stream, durable string, wait time.Duration) {
	if wait <= 0 {
		wait = DefaultHUWait
	}
	c.js, c.stream, c.durable, c.wait = js, stream, durable, wait
}

// HU implements HUSource. Without Follow it answers from what the cache
// holds; with it, a miss waits for the cache's consumer to catch up (see
// Follow) and gives nil if the consumer does not within the wait, or on an
// error asking for its state.
func (c *HUCache) HU(ctx context.Context, meta *lungsegv1.SliceMeta) *imgx.HU {
	if hu := c.get(meta); hu != nil || c.js == nil {
		return hu
	}
	ctx, cancel := context.WithTimeout(ctx, c.wait)
	defer cancel()
	st, err := c.js.Stream(ctx, c.stream) // fetches the stream's info
	if err != nil {
		return c.get(meta)
	}
	last := st.CachedInfo().State.LastSeq
	cons, err := st.Consumer(ctx, c.durable)
	if err != nil {
		return c.get(meta)
	}
	tick := time.NewTicker(huPoll)
	defer tick.Stop()
	for {
		if hu := c.get(meta); hu != nil {
			return hu
		}
		ci, err := cons.Info(ctx)
		if err != nil {
			return c.get(meta)
		}
		if ci.AckFloor.Stream >= last {
			return c.get(meta)
		}
		select {
		case <-ctx.Done():
			return c.get(meta)
		case <-tick.C:
		}
	}
}

// get returns the cached HU image of a slice, or nil.
func (c *HUCache) get(meta *lungsegv1.SliceMeta) *imgx.HU {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[huKey(meta)]
	if !ok {
		return nil
	}
	c.ll.MoveToFront(el)
	return el.Value.(*huEntry).hu
}

// Len returns the number of slices held.
func (c *HUCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// Process implements stage.Processor for raw slices.
func (c *HUCache) Process(_ context.Context, m *stage.Msg, _ stage.Emitter) error {
	var s lungsegv1.Slice
	if err := proto.Unmarshal(m.Data, &s); err != nil {
		return stage.Permanentf("findings: decoding raw slice: %w", err)
	}
	if s.Meta == nil || len(s.Hu) == 0 {
		return nil // pixels in the Object Store: not cached
	}
	hu, err := imgx.DecodeHU(int(s.Meta.Rows), int(s.Meta.Cols), s.Hu)
	if err != nil {
		return stage.Permanent(fmt.Errorf("findings: raw slice %s: %w", s.Meta.Id, err))
	}
	c.Put(s.Meta, hu)
	return nil
}
