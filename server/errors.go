package server

import (
	"context"
	"errors"
	"strings"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connectproto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// codes maps the engine's errors to Connect codes. The engine writes its
// errors' text for the requester, so known errors keep their message.
var codes = []struct {
	err  error
	code connect.Code
}{
	{engine.ErrUnauthenticated, connect.CodeUnauthenticated},
	{engine.ErrNotFound, connect.CodeNotFound},
	{engine.ErrExists, connect.CodeAlreadyExists},
	{engine.ErrConversationExists, connect.CodeAlreadyExists},
	{engine.ErrOpConflict, connect.CodeAlreadyExists},
	{engine.ErrInvalid, connect.CodeInvalidArgument},
	{model.ErrInvalidOp, connect.CodeInvalidArgument},
	{model.ErrBadVector, connect.CodeInvalidArgument},
	{engine.ErrForbidden, connect.CodePermissionDenied},
	{engine.ErrPrecondition, connect.CodeFailedPrecondition},
	{engine.ErrDotGap, connect.CodeFailedPrecondition},
	{engine.ErrDotReused, connect.CodeFailedPrecondition},
	{engine.ErrResetRequired, connect.CodeFailedPrecondition},
	{engine.ErrTooMany, connect.CodeResourceExhausted},
	{engine.ErrQuota, connect.CodeResourceExhausted},
	{engine.ErrDiskFull, connect.CodeUnavailable},
	{engine.ErrDamaged, connect.CodeDataLoss},
	{engine.ErrAccountDamaged, connect.CodeDataLoss},
}

// connectError turns an engine error into the error a client sees. Errors
// the engine did not author (storage failures, bugs) become Internal with no
// detail; the caller logs them.
func connectError(err error) error {
	var ce *connect.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return ce
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, "canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, "deadline exceeded")
	case errors.Is(err, engine.ErrFailed), errors.Is(err, engine.ErrClosed):
		return connect.NewError(connect.CodeUnavailable, "the server is stopping; retry later").WithCause(err)
	}
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return connect.NewError(c.code, withoutCode(err.Error(), c.err, c.code)).WithCause(err)
		}
	}
	return connect.NewError(connect.CodeInternal, "internal error").WithCause(err)
}

// throttled is a resource_exhausted error that a retry after wait may
// pass: a rate limit's, not a size limit's (those are resource_exhausted
// too, and a retry never passes them). It carries the wait as an error
// detail, a google.protobuf.Duration, by which clients tell the two kinds
// apart, and in its message.
func throttled(msg string, wait time.Duration) *connect.Error {
	err := connect.NewError(connect.CodeResourceExhausted, msg)
	if d, derr := connectproto.NewErrorDetail(durationpb.New(wait)); derr == nil {
		err = err.WithDetail(d)
	}
	return err
}

// withoutCode drops from msg the words of a sentinel that say what its
// Connect code says, which a client prints before the message anyway:
// "unauthenticated: wrong username or password" becomes "wrong username or
// password", not "unauthenticated: unauthenticated: ...". Sentinels whose
// words say more than their code ("dot gap") keep them.
func withoutCode(msg string, sentinel error, code connect.Code) string {
	words := sentinel.Error()
	if strings.ReplaceAll(words, " ", "_") != code.String() {
		return msg
	}
	if rest, ok := strings.CutPrefix(msg, words+": "); ok {
		return rest
	}
	return msg
}

// rejectReasons maps per-op rejections to their wire reasons.
var rejectReasons = []struct {
	err    error
	reason ferryv1.RejectReason
}{
	{engine.ErrDotGap, ferryv1.RejectReason_REJECT_REASON_DOT_GAP},
	{engine.ErrDotReused, ferryv1.RejectReason_REJECT_REASON_DOT_REUSED},
	{engine.ErrOpConflict, ferryv1.RejectReason_REJECT_REASON_OP_ID_CONFLICT},
	{engine.ErrNotFound, ferryv1.RejectReason_REJECT_REASON_NOT_FOUND},
	{engine.ErrForbidden, ferryv1.RejectReason_REJECT_REASON_PERMISSION_DENIED},
	{engine.ErrPrecondition, ferryv1.RejectReason_REJECT_REASON_FAILED_PRECONDITION},
	{engine.ErrConversationExists, ferryv1.RejectReason_REJECT_REASON_CONVERSATION_EXISTS},
	{engine.ErrQuota, ferryv1.RejectReason_REJECT_REASON_QUOTA_EXCEEDED},
}

func rejectReason(err error) ferryv1.RejectReason {
	for _, r := range rejectReasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ferryv1.RejectReason_REJECT_REASON_UNSPECIFIED
}
