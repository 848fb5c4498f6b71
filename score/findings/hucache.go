package findings

import (
	"container/list"
	"context"
	"fmt"
	"sync"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
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
// before preprocess, segment and score run, so the cache normally has a
// slice by the time its score arrives. Safe for concurrent use.
type HUCache struct {
	max int64

	mu    sync.Mutex
	bytes int64
	ll    *list.List // front: most recent
	byKey map[string]*list.Element
}

type huEntry struct {
	key string
	hu  *imgx.HU
}

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

// HU implements HUSource.
func (c *HUCache) HU(meta *lungsegv1.SliceMeta) *imgx.HU {
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
