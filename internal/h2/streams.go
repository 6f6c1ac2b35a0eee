package h2

import "iter"

// streamSet holds a connection's streams by id. A chat client's
// connection carries one long stream (its Sync) and now and then a call
// beside it: the first stream takes a field of its own, and a map is
// made only for the others. A map for the one stream was some 250 bytes
// of each idle device's memory.
type streamSet struct {
	one  *stream            // nil when free
	more map[uint32]*stream // nil until a second stream is held
}

func (s *streamSet) get(id uint32) *stream {
	if s.one != nil && s.one.id == id {
		return s.one
	}
	return s.more[id] // nil map: nil
}

// put adds st, whose id is not held.
func (s *streamSet) put(st *stream) {
	if s.one == nil {
		s.one = st
		return
	}
	if s.more == nil {
		s.more = make(map[uint32]*stream)
	}
	s.more[st.id] = st
}

func (s *streamSet) del(id uint32) {
	if s.one != nil && s.one.id == id {
		s.one = nil
		return
	}
	delete(s.more, id)
}

func (s *streamSet) len() int {
	n := len(s.more)
	if s.one != nil {
		n++
	}
	return n
}

// all yields every stream held; the loop may delete the one it is given.
func (s *streamSet) all() iter.Seq[*stream] {
	return func(yield func(*stream) bool) {
		if one := s.one; one != nil && !yield(one) {
			return
		}
		for _, st := range s.more {
			if !yield(st) {
				return
			}
		}
	}
}
