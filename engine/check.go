package engine

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// CheckReport summarises a consistency check.
type CheckReport struct {
	Conversations int
	Ops           int
	FeedEntries   int
	Problems      []string // empty when the store is consistent
}

// Err returns the problems as one error, or nil.
func (r CheckReport) Err() error {
	if len(r.Problems) == 0 {
		return nil
	}
	msg := fmt.Sprintf("%d problems", len(r.Problems))
	for i, p := range r.Problems {
		if i == 20 {
			msg += fmt.Sprintf("\n  ... and %d more", len(r.Problems)-20)
			break
		}
		msg += "\n  " + p
	}
	return errors.New(msg)
}

// Check verifies that everything derived from the log agrees with it: for
// every conversation, that seqs are dense, that the op-id, dot and edit
// indexes point at the right ops, that dots are gapless per device, that
// the conversation and member records match a replay of the log, that
// erased ops were deleted, that every feed entry is where the membership
// says, that users' conversation lists hold the conversations they have
// member records in, that member records are of conversations that
// exist, that read markers count the messages up to them right, that each
// user's usage is what their ops count (Engine.Usage), that the account
// records agree (users, usernames, devices, tokens and devices' users:
// see accountFixes), and that the store saw no single deletion misused
// since it opened (store.Store.Misuses). It reads the whole store, and
// holds every account record in memory while it does: an operator's and
// a test's tool, not a request path.
func (e *Engine) Check() (CheckReport, error) {
	r := e.reader()
	defer r.release()
	c := &checker{r: r, counted: map[ulid.ULID]int64{}, owners: newLogOwners()}
	feedPos, err := readFeedPos(r.v)
	if err != nil {
		return c.rep, err
	}
	c.feedPos = feedPos
	c.want, c.lists, c.unread, c.convs = map[string]bool{}, map[string]bool{}, map[ulid.ULID]bool{}, map[ulid.ULID]bool{}
	err = scan(r.v, []byte{keys.TConv}, func(k, val []byte) error {
		conv, ok := keys.ParseID(k, 1)
		if !ok || len(k) != 17 {
			c.problem("malformed conversation key %x", k)
			return nil
		}
		c.convs[conv] = true
		rec, err := record.DecodeConv(val)
		if err != nil {
			c.problem("conversation %s: %v", conv, err)
			c.unread[conv] = true
			return nil
		}
		c.rep.Conversations++
		return c.conv(conv, rec)
	})
	if err != nil {
		return c.rep, err
	}
	// Every feed entry must be one that some conversation's membership
	// expects, and every expected one must exist.
	err = scan(r.v, []byte{keys.TFeed}, func(k, _ []byte) error {
		c.rep.FeedEntries++
		if !c.want[string(k)] {
			_, pos, conv, _ := keys.ParseFeed(k)
			c.problem("stray feed entry at position %d for conversation %s", pos, conv)
		}
		delete(c.want, string(k))
		return nil
	})
	if err != nil {
		return c.rep, err
	}
	err = scan(r.v, []byte{keys.TShared}, func(k, _ []byte) error {
		c.rep.FeedEntries++
		if !c.want[string(k)] {
			u, conv, _ := keys.ParseID2(k)
			c.problem("stray shared feed entry of user %s for conversation %s", u, conv)
		}
		delete(c.want, string(k))
		return nil
	})
	if err != nil {
		return c.rep, err
	}
	for k := range c.want {
		if k[0] == keys.TShared {
			u, conv, _ := keys.ParseID2([]byte(k))
			c.problem("missing shared feed entry of user %s for conversation %s", u, conv)
			continue
		}
		u, pos, conv, _ := keys.ParseFeed([]byte(k))
		c.problem("missing feed entry of user %s for conversation %s at position %d", u, conv, pos)
	}
	// Member records belong to conversations that exist.
	for _, t := range []byte{keys.TMember, keys.TFormer} {
		err = scan(r.v, []byte{t}, func(k, _ []byte) error {
			if conv, ok := keys.ParseID(k, 1); !ok || !c.convs[conv] {
				u, _ := keys.ParseID(k, 17)
				c.problem("member record of user %s for conversation %s, which does not exist", u, conv)
			}
			return nil
		})
		if err != nil {
			return c.rep, err
		}
	}
	// Every user's list of conversations holds those they have a member
	// record in, and no other.
	err = scan(r.v, []byte{keys.TUserConv}, func(k, _ []byte) error {
		u, conv, _ := keys.ParseID2(k)
		if !c.lists[string(k)] && !c.unread[conv] {
			c.problem("user %s lists conversation %s, where they have no member record", u, conv)
		}
		delete(c.lists, string(k))
		return nil
	})
	if err != nil {
		return c.rep, err
	}
	for k := range c.lists {
		u, conv, _ := keys.ParseID2([]byte(k))
		c.problem("conversation %s member %s: missing from the user's conversations", conv, u)
	}
	if err := c.userFeed(); err != nil {
		return c.rep, err
	}
	// Waiting receipts belong to conversations that exist.
	err = scan(r.v, []byte{keys.TReceipts}, func(k, _ []byte) error {
		conv, ok := keys.ParseID1(k)
		if !ok {
			c.problem("malformed receipts key %x", k)
			return nil
		}
		if has, err := r.v.Has(keys.ID1(keys.TConv, conv)); err != nil || !has {
			c.problem("waiting receipts for conversation %s, which does not exist", conv)
		}
		return nil
	})
	if err != nil {
		return c.rep, err
	}
	if err := c.usage(); err != nil {
		return c.rep, err
	}
	fixes, err := accountFixes(r.v, c.owners)
	if err != nil {
		return c.rep, err
	}
	if err := checkQuotas(r.v, c.problem); err != nil {
		return c.rep, err
	}
	for _, f := range fixes {
		c.problem("%s", f.problem)
	}
	// Feed entries go with single deletions, which let an entry set twice
	// show again.
	if n := e.st.Misuses(); n > 0 {
		c.problem("the store found %d single deletions misused since it opened (see the log): a deleted feed entry may show again", n)
	}
	return c.rep, nil
}

type checker struct {
	r       reader
	rep     CheckReport
	feedPos uint64
	counted map[ulid.ULID]int64 // each user's usage, as the ops read give it
	owners  *logOwners          // each authoring device's user, as the ops read give it
	want    map[string]bool     // feed keys that must exist
	lists   map[string]bool     // TUserConv keys that must exist
	unread  map[ulid.ULID]bool  // conversations whose record does not decode
	convs   map[ulid.ULID]bool  // conversations with a record
}

func (c *checker) problem(format string, args ...any) {
	c.rep.Problems = append(c.rep.Problems, fmt.Sprintf(format, args...))
}

func (c *checker) conv(conv ulid.ULID, rec record.Conv) error {
	v := c.r.v
	var (
		seq      uint64
		messages uint64
		title    string
		dots     = map[ulid.ULID]uint64{}
		roles    = map[ulid.ULID]record.Member{}
		deleted  = map[ulid.ULID]bool{} // deleted message ids
		edits    = map[ulid.ULID][]uint64{}
		erased   []record.Op
		nEdits   int
		opDots   []seqDot // the log's dots, in seq order
	)
	err := scan(v, keys.ID1(keys.TOp, conv), func(k, val []byte) error {
		_, s, ok := keys.ParseOp(k)
		if !ok {
			c.problem("conversation %s: malformed op key %x", conv, k)
			return nil
		}
		seq++
		if s != seq {
			c.problem("conversation %s: seq %d follows %d", conv, s, seq-1)
			seq = s
		}
		op, err := record.DecodeOp(conv, s, val)
		if err != nil {
			c.problem("conversation %s seq %d: %v", conv, s, err)
			return nil
		}
		c.rep.Ops++
		c.counted[op.User] += opUsage(&op.Op, op.Erased)
		c.owners.add(op.Dot.Device, op.User)
		if op.Kind == model.KindMessage {
			messages++
		}
		if op.Messages != messages {
			c.problem("conversation %s seq %d: message count %d, replay says %d", conv, s, op.Messages, messages)
		}
		dots[op.Dot.Device]++
		if op.Dot.N != dots[op.Dot.Device] {
			c.problem("conversation %s seq %d: dot %s, replay expects %d", conv, s, op.Dot, dots[op.Dot.Device])
			dots[op.Dot.Device] = op.Dot.N
		}
		c.expectUint(keys.ID2(keys.TOpID, conv, op.ID), s, "op-id index of %s/%d", conv, s)
		opDots = append(opDots, seqDot{s, op.Dot})
		switch op.Kind {
		case model.KindCreate:
			title = op.Title
			roles[op.User] = record.Member{Role: model.RoleOwner, Since: s}
		case model.KindSetTitle:
			title = op.Title
		case model.KindMemberAdd, model.KindMemberRole:
			roles[op.Member] = record.Member{Role: op.Role, Since: s}
		case model.KindMemberRemove:
			roles[op.Member] = record.Member{Role: model.RoleNone, Since: s, Title: title}
		case model.KindEdit:
			nEdits++
			edits[op.Target] = append(edits[op.Target], s)
			if ok, err := v.Has(keys.Edit(conv, op.Target, s)); err != nil || !ok {
				c.problem("conversation %s seq %d: edit index entry missing", conv, s)
			}
		case model.KindDelete:
			deleted[op.Target] = true
		}
		if op.Erased {
			erased = append(erased, op)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seq != rec.Head {
		c.problem("conversation %s: head %d, log ends at %d", conv, rec.Head, seq)
	}
	if messages != rec.Messages {
		c.problem("conversation %s: %d messages recorded, log has %d", conv, rec.Messages, messages)
	}
	if title != rec.Title {
		c.problem("conversation %s: title %q, log says %q", conv, rec.Title, title)
	}
	for _, op := range erased {
		target := op.ID
		if op.Kind == model.KindEdit {
			target = op.Target
		}
		if !deleted[target] {
			c.problem("conversation %s seq %d: erased, but message %s was never deleted", conv, op.Seq, target)
		}
	}
	for target := range deleted {
		for _, s := range edits[target] {
			if o, err := readOp(v, conv, s); err == nil && !o.Erased {
				c.problem("conversation %s seq %d: edit of deleted message %s still holds its body", conv, s, target)
			}
		}
		if seqRaw, err := v.Get(keys.ID2(keys.TOpID, conv, target)); err == nil {
			if ts, err := record.DecodeUint(seqRaw); err == nil {
				if o, err := readOp(v, conv, ts); err == nil && !o.Erased {
					c.problem("conversation %s: deleted message %s still holds its body", conv, target)
				}
			}
		}
	}
	for _, t := range []struct {
		table byte
		want  uint64
		what  string
	}{{keys.TOpID, rec.Head, "op-id index"}, {keys.TEdit, uint64(nEdits), "edit index"}} {
		n, err := count(v, keys.ID1(t.table, conv))
		if err != nil {
			return err
		}
		if n != t.want {
			c.problem("conversation %s: %s has %d entries, log implies %d", conv, t.what, n, t.want)
		}
	}
	if err := c.dotRuns(conv, opDots); err != nil {
		return err
	}
	vec, err := readVector(v, conv)
	if err != nil {
		return err
	}
	if !vec.Equal(vectorOf(dots)) {
		c.problem("conversation %s: vector %v, log implies %v", conv, vec, vectorOf(dots))
	}
	// Membership and feed entries.
	if rec.FeedPos > c.feedPos {
		c.problem("conversation %s: feed position %d beyond the store's %d", conv, rec.FeedPos, c.feedPos)
	}
	if lag := rec.FeedPos - rec.EntryPos; lag > maxEntryLag || lag != 0 && (rec.MoveEntries || rec.SharedFeed) {
		c.problem("conversation %s: members' feed entries at %d, %d below its feed position (shared %v, to move %v)", conv, rec.EntryPos, lag, rec.SharedFeed, rec.MoveEntries)
	}
	active := uint32(0)
	seen := map[ulid.ULID]bool{}
	checkMember := func(k, val []byte) error {
		_, u, _ := keys.ParseID2(k)
		m, err := record.DecodeMember(val)
		if err != nil {
			c.problem("conversation %s member %s: %v", conv, u, err)
			return nil
		}
		if memberTable(m.Role) != k[0] {
			c.problem("conversation %s member %s: a record of role %s in table %#x", conv, u, m.Role, k[0])
		}
		if seen[u] {
			c.problem("conversation %s member %s: records both as a member and a former member", conv, u)
			return nil
		}
		seen[u] = true
		want, ok := roles[u]
		delete(roles, u)
		if !ok || want.Role != m.Role || want.Since != m.Since || want.Title != m.Title {
			c.problem("conversation %s member %s: role %s since %d (title %q), log says %s since %d (title %q)", conv, u, m.Role, m.Since, m.Title, want.Role, want.Since, want.Title)
		}
		pos := rec.EntryPos
		if m.Role == model.RoleNone {
			pos = m.DetachedPos
		} else {
			active++
			if m.DetachedPos != 0 {
				c.problem("conversation %s member %s: active but detached at %d", conv, u, m.DetachedPos)
			}
		}
		if m.Role != model.RoleNone && rec.SharedFeed {
			c.want[string(keys.ID2(keys.TShared, u, conv))] = true
		} else {
			c.want[string(keys.Feed(keys.TFeed, u, pos, conv))] = true
		}
		c.lists[string(keys.ID2(keys.TUserConv, u, conv))] = true
		return nil
	}
	for _, t := range []byte{keys.TMember, keys.TFormer} {
		if err := scan(v, keys.ID1(t, conv), checkMember); err != nil {
			return err
		}
	}
	for u := range roles {
		c.problem("conversation %s: log makes %s a member, but there is no member record", conv, u)
	}
	if active != rec.Members {
		c.problem("conversation %s: %d members recorded, %d active", conv, rec.Members, active)
	}
	// A device's marker decodes.
	err = scan(v, keys.ID1(keys.TDevMark, conv), func(k, val []byte) error {
		if _, err := record.DecodeMarker(val); err != nil {
			_, d, _ := keys.ParseID2(k)
			c.problem("conversation %s: marker of device %s: %v", conv, d, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A read marker that counts the messages up to it counts the log's.
	return scan(v, keys.ID1(keys.TUserMark, conv), func(k, val []byte) error {
		_, u, _ := keys.ParseID2(k)
		m, err := record.DecodeMarker(val)
		if err != nil {
			c.problem("conversation %s: marker of user %s: %v", conv, u, err)
			return nil
		}
		if !m.ReadCounted {
			return nil
		}
		op, err := readOp(v, conv, m.Read)
		switch {
		case err != nil:
			c.problem("conversation %s: user %s read up to seq %d: %v", conv, u, m.Read, err)
		case op.Messages != m.ReadMessages:
			c.problem("conversation %s: user %s read up to seq %d, counted as %d messages; the log has %d", conv, u, m.Read, m.ReadMessages, op.Messages)
		}
		return nil
	})
}

func (c *checker) expectUint(k []byte, want uint64, format string, args ...any) {
	raw, err := c.r.v.Get(k)
	if err != nil {
		c.problem(format+": missing", args...)
		return
	}
	got, err := record.DecodeUint(raw)
	if err != nil || got != want {
		c.problem(format+": points at %d", append(args, got)...)
	}
}

// seqDot is an op's dot at its seq.
type seqDot struct {
	seq uint64
	dot model.Dot
}

// dotRuns checks conv's dot index against its log, the ops' dots in seq
// order: its runs must cover every op once, each dot at its seq. The log
// is what the scan found, gaps and stray seqs included (reported as the
// log's own problems): a corrupt key at seq 0 or far past the head costs
// one entry, not memory up to its seq.
func (c *checker) dotRuns(conv ulid.ULID, log []seqDot) error {
	return checkDotRuns(c.r.v, conv, log, c.problem)
}

// checkDotRuns is checker.dotRuns, saying each problem to problem.
func checkDotRuns(v *store.View, conv ulid.ULID, log []seqDot, problem func(format string, args ...any)) error {
	covered := make([]bool, len(log))
	err := scan(v, keys.ID1(keys.TDot, conv), func(k, val []byte) error {
		run, err := decodeDotRun(k, val)
		if err != nil {
			problem("conversation %s: %v", conv, err)
			return nil
		}
		i, _ := slices.BinarySearchFunc(log, run.seq, func(e seqDot, s uint64) int { return cmp.Compare(e.seq, s) })
		for j := uint64(0); j < run.count; j++ {
			s, want := run.seq+j, model.Dot{Device: run.dev, N: run.first + j}
			if len(log) == 0 || s < log[0].seq || s > log[len(log)-1].seq {
				problem("conversation %s: dot index has %s at seq %d, outside the log", conv, want, s)
				return nil
			}
			if log[i].seq != s { // in a gap of the log, reported with it: the run goes on after
				problem("conversation %s: dot index has %s at seq %d, which the log lacks (up to seq %d)", conv, want, s, log[i].seq-1)
				j = log[i].seq - run.seq - 1
				continue
			}
			if log[i].dot != want {
				problem("conversation %s: dot index has %s at seq %d, which holds %s", conv, want, s, log[i].dot)
			}
			if covered[i] {
				problem("conversation %s: dot index has seq %d twice", conv, s)
			}
			covered[i] = true
			i++
		}
		return nil
	})
	for i, ok := range covered {
		if !ok {
			problem("dot index of %s/%d: missing", conv, log[i].seq)
		}
	}
	return err
}

// userFeed checks that user-level feed entries and their index agree.
func (c *checker) userFeed() error {
	idx := map[string]bool{}
	err := scan(c.r.v, []byte{keys.TUFeedIdx}, func(k, val []byte) error {
		u, conv, ok := keys.ParseID2(k)
		pos, err := record.DecodeUint(val)
		if !ok || err != nil {
			c.problem("malformed user feed index entry %x", k)
			return nil
		}
		idx[string(keys.Feed(keys.TUFeed, u, pos, conv))] = true
		return nil
	})
	if err != nil {
		return err
	}
	err = scan(c.r.v, []byte{keys.TUFeed}, func(k, _ []byte) error {
		if !idx[string(k)] {
			u, pos, conv, _ := keys.ParseFeed(k)
			c.problem("user feed entry of %s for %s at %d is not indexed", u, conv, pos)
		}
		delete(idx, string(k))
		return nil
	})
	for k := range idx {
		u, pos, conv, _ := keys.ParseFeed([]byte(k))
		c.problem("user feed index of %s for %s points at missing position %d", u, conv, pos)
	}
	return err
}

func count(v *store.View, prefix []byte) (uint64, error) {
	var n uint64
	err := scan(v, prefix, func(_, _ []byte) error { n++; return nil })
	return n, err
}

func vectorOf(dots map[ulid.ULID]uint64) model.Vector {
	es := make([]model.Dot, 0, len(dots))
	for d, n := range dots {
		es = append(es, model.Dot{Device: d, N: n})
	}
	return model.NewVector(es...)
}

// usage checks each user's recorded usage (keys.TUsage) against what
// their ops count, as the conversations' scans counted them.
func (c *checker) usage() error {
	want := c.counted
	err := scan(c.r.v, []byte{keys.TUsage}, func(k, val []byte) error {
		user, ok := keys.ParseID1(k)
		if !ok {
			c.problem("malformed usage key %x", k)
			return nil
		}
		n, err := record.DecodeUint(val)
		switch {
		case err != nil:
			c.problem("usage of user %s: %v", user, err)
		case int64(n) != want[user]:
			c.problem("user %s has a usage of %d bytes recorded; their ops hold %d", user, n, want[user])
		}
		delete(want, user)
		return nil
	})
	for user, n := range want {
		if n != 0 {
			c.problem("user %s has no usage recorded; their ops hold %d bytes", user, n)
		}
	}
	return err
}
