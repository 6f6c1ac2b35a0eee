package clientsdk

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
)

// State is where a device stands with the server.
type State int

// The states of a device.
const (
	// StateOffline: not connected; it will retry at Status.RetryAt if
	// syncing is started.
	StateOffline State = iota
	// StateConnecting: opening a session.
	StateConnecting
	// StateCatchingUp: receiving what it missed; see the progress counts.
	StateCatchingUp
	// StateLive: caught up; new ops arrive as they are committed.
	StateLive
	// StateFailed: a terminal error (such as a revoked device) stopped
	// syncing; Status.Err says which. Pending ops stay in the outbox.
	StateFailed
)

func (s State) String() string {
	switch s {
	case StateOffline:
		return "offline"
	case StateConnecting:
		return "connecting"
	case StateCatchingUp:
		return "catching up"
	case StateLive:
		return "live"
	case StateFailed:
		return "failed"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Status describes the device's connection and catch-up.
type Status struct {
	State State
	// Catch-up progress: conversations changed, and ops to receive and
	// received so far.
	Conversations int
	OpsTotal      uint64
	OpsReceived   uint64
	// Ready counts the changed conversations whose newest page has arrived:
	// they can be shown. Backfilled counts the older ops received after all
	// newest pages.
	Ready      int
	Backfilled uint64
	// Pending is the number of ops in the outbox.
	Pending int
	// Err is the last connection error: retryable in StateOffline, terminal
	// in StateFailed. While the server turns the device's ops away for now
	// (StateLive too), it wraps ErrPushDeferred.
	Err error
	// RetryAt is when an offline device reconnects, or when ops the server
	// turned away go again.
	RetryAt time.Time
	// Held lists the conversations whose ops the server turns away for
	// now, in id order, while the device's other ops go on: a
	// conversation damaged in the server's store
	// (REJECT_REASON_CONVERSATION_DAMAGED), which its operator repairs.
	// Only those with ops in the outbox; nil when there are none. Each
	// stays listed while its ops go again, until the server answers them
	// (its RetryAt then past), and until the session ends.
	Held []HeldConversation
}

// HeldConversation is a conversation whose ops wait (Status.Held).
type HeldConversation struct {
	Conv ulid.ULID
	// RetryAt is when its ops go again.
	RetryAt time.Time
	// Err says why, and wraps ErrPushDeferred.
	Err error
}

// Event is something that changed. Its concrete types are
// StatusChanged, ConversationChanged, MessagesChanged, OpFailed and
// Overflow.
type Event interface{ isEvent() }

// StatusChanged: the connection state or catch-up progress moved.
type StatusChanged struct{ Status Status }

// ConversationChanged: a conversation's title, membership, unread count
// or receipts changed, or it appeared, or its last message did (one
// arrived, was sent, refused or dismissed): what a conversation list
// shows of it. It also comes when the device learns a member list, or
// names of its members (Members, LookupUser, SetDisplayName; the device
// fetches member lists as memberships change), for each conversation it
// holds the members of that has them, and for every conversation when a
// name it knew changed (a user who left shows it on their messages too):
// messages show them as Message.AuthorName and AuthorDisplayName.
type ConversationChanged struct{ Conv ulid.ULID }

// MessagesChanged: messages of a conversation arrived or changed: edits,
// deletes, reactions, a message of the user's own queued, sent, refused or
// dismissed. Receipts, which move the status (delivered, read) and ReadBy
// of many of the user's messages at once, come as ConversationChanged, and
// so do the members' names (AuthorName).
type MessagesChanged struct {
	Conv ulid.ULID
	IDs  []ulid.ULID // the ops that arrived or changed
	// Messages are the messages those ops show on, by their op ids, each
	// once: a message's own, and the target of an edit, a delete or a
	// reaction, whether the device holds the message or not (yet).
	// Device.MessagesByID reads them; a title or membership op names none.
	Messages []ulid.ULID
}

// messagesChanged is the MessagesChanged of ops in conv.
func messagesChanged(conv ulid.ULID, ops []*model.Op) MessagesChanged {
	e := MessagesChanged{Conv: conv, IDs: make([]ulid.ULID, len(ops))}
	for i, op := range ops {
		e.IDs[i] = op.ID
		switch {
		case op.Kind == model.KindMessage:
			e.Messages = append(e.Messages, op.ID)
		case op.Kind.HasTarget():
			e.Messages = append(e.Messages, op.Target)
		}
	}
	if len(e.Messages) > 1 {
		slices.SortFunc(e.Messages, ulid.ULID.Compare)
		e.Messages = slices.Compact(e.Messages)
	}
	return e
}

// OpFailed: the server refused an op for good; it left the outbox. Reason
// is the server's reject reason (such as "PERMISSION_DENIED").
type OpFailed struct {
	Conv    ulid.ULID
	Op      ulid.ULID
	Reason  string
	Message string
}

// Overflow: the subscriber fell behind and events were dropped, or the
// replica was emptied (a sign-in as another user than its last); re-read
// whatever it shows.
type Overflow struct{}

func (StatusChanged) isEvent()       {}
func (ConversationChanged) isEvent() {}
func (MessagesChanged) isEvent()     {}
func (OpFailed) isEvent()            {}
func (Overflow) isEvent()            {}

// Subscription receives a device's events. Its buffer is bounded: a
// subscriber that falls behind never slows syncing. Its last free slot
// takes Overflow instead of an event, and later events are lost until
// there is room again: a subscriber that fell behind finds Overflow after
// the events it has, however quiet the device goes then, and should re-read
// what it shows. Safe for concurrent use.
type Subscription struct {
	d      *Device
	c      chan Event
	closed bool // guarded by d.mu
}

// Subscribe returns a subscription with room for buffer events (at least
// 16).
func (d *Device) Subscribe(buffer int) *Subscription {
	s := &Subscription{d: d, c: make(chan Event, max(buffer, 16))}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		close(s.c)
		s.closed = true
		return s
	}
	d.subs[s] = struct{}{}
	return s
}

// C is the channel of events; it is closed by Close and when the device
// closes.
func (s *Subscription) C() <-chan Event { return s.c }

// Close stops the subscription.
func (s *Subscription) Close() {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	s.closeLocked()
}

func (s *Subscription) closeLocked() {
	if !s.closed {
		s.closed = true
		delete(s.d.subs, s)
		close(s.c)
	}
}

// emit sends events to every subscriber without blocking. d.mu is held,
// and only emit sends: a channel's length can only shrink meanwhile.
func (d *Device) emit(evs ...Event) {
	for s := range d.subs {
		for _, ev := range evs {
			switch room := cap(s.c) - len(s.c); {
			case room > 1:
				s.c <- ev
			case room == 1:
				s.c <- Overflow{} // the events from here on may be lost
			}
		}
	}
}

// Status returns the device's connection status.
func (d *Device) Status() Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.statusLocked()
}

func (d *Device) statusLocked() Status {
	st := d.status
	st.Pending = len(d.pending)
	if len(st.Held) > 0 {
		// Only conversations with ops waiting: their echo may have
		// come first (stored after all, by an earlier push).
		waiting := map[ulid.ULID]bool{}
		for _, ref := range d.pending {
			waiting[ref.conv] = true
		}
		st.Held = slices.DeleteFunc(slices.Clone(st.Held), func(h HeldConversation) bool { return !waiting[h.Conv] })
		if len(st.Held) == 0 {
			st.Held = nil
		}
	}
	if st.Pending == 0 && errors.Is(st.Err, ErrPushDeferred) {
		// The ops turned away left the outbox another way (their echo
		// came first): nothing waits any more.
		st.Err, st.RetryAt = nil, time.Time{}
	}
	return st
}

// setStatus changes the status and tells subscribers. d.mu is held.
func (d *Device) setStatus(f func(*Status)) {
	f(&d.status)
	d.emit(StatusChanged{Status: d.statusLocked()})
}
