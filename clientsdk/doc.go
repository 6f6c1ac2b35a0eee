// Package clientsdk makes a Go program a Ferry device: offline-first, with a
// local replica of its conversations and an outbox, kept in sync with a
// Ferry server.
//
// A Device is opened from a profile folder (Open) or in memory
// (OpenMemory), signed in once (Register or Login), and started (Start).
// From then on:
//
//   - Sends (Send, Edit, Delete, React, ...) return at once with the op's
//     id (CreateConversation with the new conversation's); they never wait
//     for the network, and their ctx is not used today. The op is in the outbox, persisted with a synced
//     write before the call returns, and visible in queries as pending. It
//     goes out when the device is connected, in the order it was made, and
//     retries never duplicate it: its id is chosen before the first send.
//   - Each message's status moves pending -> sent (it has a seq) ->
//     delivered -> read, from the other members' markers. An op the server
//     refuses for good leaves the outbox, stays visible as failed (Failed)
//     and is reported as an OpFailed event.
//   - The device connects, catches up and reconnects by itself, with
//     backoff and jitter. Catch-up shows what matters first: the changed
//     conversations with unread counts, then the newest page of each, then
//     the rest oldest first. The replica knows which seq ranges it holds, so
//     a conversation still filling in says so (Page.OlderLoading) instead of
//     showing a silent hole. A catch-up cut off resumes where it stopped.
//   - Retryable errors (the network, a server restart) never drop data;
//     terminal ones (a revoked device) stop syncing and reach the
//     application as a *TerminalError, in Status and as a StatusChanged
//     event. An op the server refuses as invalid (a body over the limit, an
//     empty reaction key) fails at once with an error wrapping
//     model.ErrInvalidOp.
//   - Queries (Conversations, Messages, Outbox, Failed) read the replica,
//     offline or not; Members asks the server first and falls back to the
//     replica. Subscribe delivers typed events as things change.
//   - After Close, every call returns ErrClosed.
//
// # Concurrency
//
// A Device is safe for concurrent use. Queries and sends take a lock shared
// with the sync goroutine, which holds it only for local writes, never
// across the network. A Subscription's channel is bounded and never slows
// syncing: a subscriber that falls behind receives Overflow.
package clientsdk
