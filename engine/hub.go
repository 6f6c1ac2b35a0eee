package engine

import (
	"sync"

	"github.com/oklog/ulid/v2"
)

// hub wakes the sessions of users whose feed changed. It carries no
// payloads: a woken session reads what changed from the durable view at its
// own pace, so a slow device only slows itself and memory does not grow
// with its lag.
//
// Each watched user has a channel that a commit closes and replaces; a
// session takes the current channel before reading, so a commit that lands
// after the read still wakes it.
type hub struct {
	shards [64]hubShard
}

type hubShard struct {
	mu    sync.Mutex
	users map[ulid.ULID]*userSignal
}

type userSignal struct {
	ch   chan struct{}
	refs int
}

func newHub() *hub {
	h := &hub{}
	for i := range h.shards {
		h.shards[i].users = map[ulid.ULID]*userSignal{}
	}
	return h
}

func (h *hub) shard(u ulid.ULID) *hubShard { return &h.shards[u[15]%byte(len(h.shards))] }

// watch registers interest in user's changes until the watch is closed.
func (h *hub) watch(user ulid.ULID) *watch {
	s := h.shard(user)
	s.mu.Lock()
	sig := s.users[user]
	if sig == nil {
		sig = &userSignal{ch: make(chan struct{})}
		s.users[user] = sig
	}
	sig.refs++
	s.mu.Unlock()
	return &watch{h: h, user: user}
}

// wake closes the current channel of every watched user in users.
func (h *hub) wake(users map[ulid.ULID]struct{}) {
	for u := range users {
		s := h.shard(u)
		s.mu.Lock()
		if sig := s.users[u]; sig != nil {
			close(sig.ch)
			sig.ch = make(chan struct{})
		}
		s.mu.Unlock()
	}
}

// watching counts watched users, for tests and metrics.
func (h *hub) watching() int {
	n := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		n += len(s.users)
		s.mu.Unlock()
	}
	return n
}

// watch is one session's registration with the hub.
type watch struct {
	h    *hub
	user ulid.ULID
	once sync.Once
}

// signal returns the channel the next change of the user's feed closes.
func (w *watch) signal() <-chan struct{} {
	s := w.h.shard(w.user)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.users[w.user].ch
}

func (w *watch) close() {
	w.once.Do(func() {
		s := w.h.shard(w.user)
		s.mu.Lock()
		if sig := s.users[w.user]; sig != nil {
			sig.refs--
			if sig.refs == 0 {
				delete(s.users, w.user)
			}
		}
		s.mu.Unlock()
	})
}
