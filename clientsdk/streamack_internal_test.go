package clientsdk

import (
	"testing"

	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// ackStream records the acks a session sends on its stream.
type ackStream struct{ acks []*ferryv1.Ack }

func (a *ackStream) send(m *ferryv1.SyncRequest) error {
	a.acks = append(a.acks, m.GetAck())
	return nil
}

// TestStreamAcksAreNotRecorded: markers sent on a Sync stream are not
// recorded as acknowledged, since the server may never read them (a stream
// that Stop cuts, or that breaks): the session does not send them twice,
// a later session sends them again, and until the unary Ack records them
// they are still to send. A session sends at most maxPush in one ack, the
// server's limit.
func TestStreamAcksAreNotRecorded(t *testing.T) {
	d := memoryDevice(t)
	const convs = 2*maxPush + 1
	d.mu.Lock()
	for range convs {
		d.convs[ulid.Make()] = &convRecord{Head: 3, Ranges: [][2]uint64{{1, 3}}}
	}
	d.mu.Unlock()
	count := func(acks []*ferryv1.Ack) (sizes []int) {
		for _, a := range acks {
			sizes = append(sizes, len(a.GetMarkers()))
		}
		return sizes
	}

	first := &ackStream{}
	s := &session{d: d}
	s.sendAcksWith(first.send)
	s.sendAcksWith(first.send)
	if got := count(first.acks); len(got) != 3 || got[0] != maxPush || got[1] != maxPush || got[2] != 1 {
		t.Fatalf("the first session sent acks of %v markers; want %d, %d and 1, once", got, maxPush, maxPush)
	}
	if n := len(d.markers()); n != convs {
		t.Fatalf("%d markers still to send after the stream's acks; want all %d, not recorded", n, convs)
	}
	next := &ackStream{}
	(&session{d: d}).sendAcksWith(next.send)
	if got := count(next.acks); len(got) != 3 {
		t.Fatalf("the next session sent acks of %v markers; want them all again", got)
	}
	d.acked(d.markers()) // what the unary Ack does once the server answers
	if n := len(d.markers()); n != 0 {
		t.Fatalf("%d markers still to send after they were acknowledged", n)
	}
}
