package clientsdk

import (
	"strings"
	"testing"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// TestPushPiece: a repair's push takes at most maxPush ops and keeps to
// the byte limit, but always one op.
func TestPushPiece(t *testing.T) {
	op := func(body int) *ferryv1.Op {
		return &ferryv1.Op{Id: "01J00000000000000000000000", Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{Body: []byte(strings.Repeat("x", body))}}}
	}
	big := make([]*ferryv1.Op, 80)
	for i := range big {
		big[i] = op(60_000)
	}
	if n := pushPiece(big, 4<<20-pushFraming); n < 60 || n >= 70 {
		t.Fatalf("%d ops of 60 KB in a push under 4 MiB less its framing, want 60-69", n)
	}
	small := make([]*ferryv1.Op, 1500)
	for i := range small {
		small[i] = op(10)
	}
	if n := pushPiece(small, 4<<20); n != maxPush {
		t.Fatalf("%d small ops in a push, want maxPush (%d)", n, maxPush)
	}
	if n := pushPiece([]*ferryv1.Op{op(100)}, 10); n != 1 {
		t.Fatalf("%d ops of an op over the limit, want it alone", n)
	}
}
