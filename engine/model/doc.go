// Package model is Ferry's data model as pure values and functions: ops and
// their kinds, dots, version vectors, the rules that say which ops a member
// may author, and the fold that turns a set of ops into conversation state.
//
// Nothing here does I/O, reads a clock or keeps global state, so the server's
// engine and the client SDK compute exactly the same things, and tests can
// replay any scenario. The package imports no storage and no network code.
//
// # Semantics
//
// Order is by seq, the server's arrival order in one conversation. Given the
// same set of ops, [State] is the same whatever order or duplication they
// arrived in:
//   - a message is a new entry with opaque body bytes;
//   - an edit replaces a message's body; the edit with the highest seq wins,
//     and only edits by the message's author count;
//   - a delete is a tombstone that wins over every edit, earlier or later,
//     and forgets the body;
//   - a reaction is a register per (message, user, key); the reaction op
//     with the highest seq wins;
//   - membership (add, remove, role) is a register per user, and the title a
//     register per conversation; the highest seq wins.
//
// Whether an op is allowed is decided once, when the server accepts it
// ([Authorize]); the fold does not second-guess the log.
//
// # Concurrency
//
// Values ([Op], [Vector], [Dot]) are immutable once built and safe to share.
// A [State] is not safe for concurrent use.
package model
