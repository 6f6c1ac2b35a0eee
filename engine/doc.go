// Package engine is Ferry's domain: conversations as durable replicated logs
// on an embedded Pebble store, with accounts, devices, membership, markers,
// per-user feeds and sync sessions. It has no network code; the server
// adapts the wire to it.
//
// # Durability
//
// Every write goes through one writer goroutine that groups concurrent
// requests into one Pebble batch and commits it with a WAL sync (group
// commit). A call such as [Engine.Append] returns only after that commit
// returned: an acknowledged op survives any crash. If the commit fails the
// engine stops (fail-stop): the failing call and every later write return
// [ErrFailed], nothing more is acknowledged, and Options.OnFatal is called so
// the process can exit.
//
// Readers never see undurable data: they read a durable view, a snapshot
// taken after the last synced commit (see the store package for why Pebble
// needs this).
//
// A record that does not decode is damage, not a failed commit: where it
// is a conversation's, met before anything changed, that conversation is
// fenced off ([ErrDamaged]: its ops refused, its members' sessions leave
// it out, held below it) and the engine goes on serving the others, until
// the store is repaired offline ([Rebuild]); see damageSet.
//
// # Invariants
//
//   - The same op id is stored at most once per conversation; a retry gets
//     the original seq, and the same id with another payload is rejected
//     ([ErrOpConflict]).
//   - Dots from one device are accepted in order without gaps: a gap
//     ([ErrDotGap]) or a reused dot ([ErrDotReused]) is rejected with the
//     server's entry for that device.
//   - seq is dense per conversation and never reused within an epoch.
//   - Everything but the log (dot and op-id indexes, conversation records,
//     membership, feeds, markers) is derived from it; [Engine.Check] verifies
//     that they agree, and [Rebuild] makes them agree again.
//   - Nobody reads or writes a conversation they are not a member of; a
//     removed member can read up to the op that removed them.
//   - Reconnect work is proportional to what changed: a user's feed holds one
//     entry per changed conversation, ordered by feed position. (A change
//     may leave the members' entries a little below its position, so a
//     reconnect also reads the records of the conversations that changed
//     in the few positions before the device's: see moveConvFeed.)
//
// # Concurrency
//
// An [Engine] is safe for concurrent use. A [Session] is not: one goroutine
// drives it.
package engine
