package engine

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// RebuildReport says what Rebuild found and fixed.
type RebuildReport struct {
	Conversations int
	Ops           int
	// Fixes counts the fixes made, by what they fixed, in the order of
	// their descriptions; empty when everything agreed with the logs.
	Fixes []Fix
	// Unfixed lists what Rebuild could not repair and left as it found
	// it: a log with a gap, an op that does not decode, ops lost from a
	// log's end, an erased op whose message was never deleted, a
	// malformed key, a user's record that does not decode. Check reports
	// it again.
	Unfixed []string
	// Check is the consistency check of the store once rebuilt.
	Check CheckReport
}

// Fix counts the fixes of one kind.
type Fix struct {
	What string
	N    int
}

// rebuildBatch bounds the bytes of changes one commit of Rebuild holds:
// its memory, when a table was lost whole.
var rebuildBatch = 4 << 20

// Rebuild repairs the store of a stopped server from its conversations'
// logs, which are the truth: everything derived from them is made to agree
// with them again — the op-id, dot and edit indexes, the message counts of
// ops, the conversation, member and read-marker records, the members'
// conversation lists and feed entries, the user feed's index, each user's
// usage and the store's feed position; member records of conversations
// that do not exist go, and an upgrade to format 8 that a record which
// does not decode held up is ended. The bodies of deleted messages
// and of their edits that a delete left behind are erased, as the delete
// would have. The logs themselves are not changed otherwise: a
// conversation whose log Rebuild cannot read in full (a gap in its seqs,
// an op that does not decode, a dot out of order, or an end before the
// seq its record, indexes or markers reach: ops lost from its end, where
// the next op would take a seq devices hold) is left as found, and said
// so in the report's Unfixed.
//
// Where a conversation's record was lost (gone, or it does not decode),
// it is made anew from the log at a new feed position, where every
// member's devices see the conversation again; shared when a member holds
// a shared entry for it or it has more members than
// Options.SharedFeedMembers (give Rebuild the server's). A lost record
// that no entry of its own places (a shared feed's entries hold no
// position) is bounded by the store's position alone: where that is found
// behind what is in use, or garbled, the store starts a new epoch at its
// next start, where devices start again (they might hold positions past
// any Rebuild could give it).
//
// The account records are made to agree as well (accountFixes): a
// username's record with the user whose record has the name, a token's
// with the device record that holds its hash, a device's record of its
// user with the device's record or, for a device revoked since, its ops.
// A device's record that does not decode is made anew from the one token
// record that names the device, which keeps signing in under a name that
// says so; with none, it is deleted, as revoking does, and the device
// signs in again. A user's record that does not decode cannot be made
// anew (nothing else holds their password's hash): restore it from a
// backup.
//
// Where a former member's record was lost (or is of an earlier removal),
// the feed position they were detached at is too: they are detached at
// the conversation's feed position, which a device of theirs that has
// not synced past it sees them removed at.
//
// It commits as it goes, in batches of a few MiB; each fix sets what the
// log implies, so a Rebuild that stopped part way (a crash, a full disk)
// is finished by running it again. A store that agrees with its logs is
// left untouched. Once done it checks the store (Engine.Check), whose
// report it returns with its own. It starts no writer: waiting receipts,
// say, go out when a server next starts.
//
// It keeps about 64 bytes for each op of the conversation it is at, and
// a key for each feed entry of the store: an operator's tool, for a
// store that Check found inconsistent.
func Rebuild(dir string, opts Options) (RebuildReport, error) {
	var rep RebuildReport
	opts.Existing = true
	_, err := open(dir, opts, func(e *Engine) error {
		start := time.Now()
		e.log.Info("rebuilding the store from its logs")
		r := &rebuilder{
			st:        e.st,
			v:         e.st.View(),
			b:         e.st.NewBatch(),
			rep:       &rep,
			fixes:     map[string]int{},
			want:      map[string]bool{},
			userConvs: map[string]bool{},
			kept:      map[ulid.ULID]bool{},
			known:     map[ulid.ULID]bool{},
			placed:    map[ulid.ULID]bool{},
			usage:     map[ulid.ULID]int64{},
			owners:    newLogOwners(),
			sharedMax: e.opts.SharedFeedMembers,
			newEpoch: func() error {
				return e.markNewEpoch(e.dir, "Opening this store starts a new epoch (ferryd rebuild: a lost conversation record's feed position could not be recovered).\n")
			},
		}
		defer r.v.Release()
		err := r.run()
		if err == nil {
			err = r.commit()
		} else if r.b != nil {
			r.b.Close()
		}
		fixes := 0
		for what, n := range r.fixes {
			rep.Fixes = append(rep.Fixes, Fix{what, n})
			fixes += n
		}
		slices.SortFunc(rep.Fixes, func(a, b Fix) int { return cmp.Compare(a.What, b.What) })
		if err != nil {
			return fmt.Errorf("rebuild (what it fixed so far stays; run it again to finish): %w", err)
		}
		e.log.Info("rebuilt the store from its logs", "conversations", rep.Conversations, "ops", rep.Ops,
			"fixes", fixes, "unfixed", len(rep.Unfixed), "took", time.Since(start).Round(time.Millisecond))
		rep.Check, err = e.Check()
		return err
	})
	return rep, err
}

// rebuilder is the state of a Rebuild: it reads the store as it was when
// Rebuild began (v) and writes what it fixes through b.
type rebuilder struct {
	st    *store.Store
	v     *store.View
	b     *store.Batch
	rep   *RebuildReport
	fixes map[string]int

	maxFeedPos uint64             // the highest feed position a record or an entry holds, or may
	inUse      uint64             // the highest a record or an entry holds
	placed     map[ulid.ULID]bool // lost records' conversations with an entry of their own
	newEpoch   func() error       // marks the store to start a new epoch at its next open
	want       map[string]bool    // the feed entries (TFeed, TShared) the members' records imply
	userConvs  map[string]bool    // the TUserConv entries they imply
	// kept holds the conversations left as found: their feed entries and
	// conversation lists are kept as they are.
	kept       map[ulid.ULID]bool
	known      map[ulid.ULID]bool  // the conversations with a record, or a log
	sharedMax  int                 // Options.SharedFeedMembers
	usage      map[ulid.ULID]int64 // each user's usage, as their ops count it
	usageWrong bool                // an op did not decode: usage cannot be counted
	owners     *logOwners          // each authoring device's user, as the ops give it
}

func (r *rebuilder) fixed(what string) { r.fixes[what]++ }

func (r *rebuilder) unfixed(format string, args ...any) {
	r.rep.Unfixed = append(r.rep.Unfixed, fmt.Sprintf(format, args...))
}

func (r *rebuilder) set(k, val []byte) error {
	r.b.Set(k, val)
	return r.flushIfFull()
}

func (r *rebuilder) del(k []byte) error {
	r.b.Delete(k)
	return r.flushIfFull()
}

func (r *rebuilder) flushIfFull() error {
	if r.b.Len() < rebuildBatch {
		return nil
	}
	if err := r.commit(); err != nil {
		return err
	}
	r.b = r.st.NewBatch()
	return nil
}

func (r *rebuilder) commit() error {
	b := r.b
	r.b = nil // the commit closes it (after a failed one, the store refuses any other)
	if b.Count() == 0 {
		b.Close()
		return nil
	}
	if err := r.st.Commit(b); err != nil {
		return err
	}
	if f := afterRebuildCommit; f != nil {
		return f()
	}
	return nil
}

// afterRebuildCommit, when set (by tests), runs after each commit of
// Rebuild; an error stops it there, as a crash would.
var afterRebuildCommit func() error

func (r *rebuilder) run() error {
	feedPos, err := readFeedPos(r.v)
	garbled := errors.Is(err, record.ErrCorrupt)
	if garbled {
		feedPos, err = 0, nil
	}
	if err != nil {
		return err
	}
	// First, reading only: the conversations whose record does not
	// decode or is gone, and the greatest feed position in use.
	r.maxFeedPos = feedPos
	var lost []ulid.ULID
	err = scan(r.v, []byte{keys.TConv}, func(k, val []byte) error {
		conv, ok := keys.ParseID(k, 1)
		if !ok || len(k) != 17 {
			r.unfixed("malformed conversation key %x", k)
			return nil
		}
		r.rep.Conversations++
		r.known[conv] = true
		rec, err := record.DecodeConv(val)
		if err != nil {
			lost = append(lost, conv)
		}
		r.maxFeedPos = max(r.maxFeedPos, rec.FeedPos)
		return nil
	})
	if err != nil {
		return err
	}
	err = r.logsWithoutRecord(func(conv ulid.ULID) {
		r.rep.Conversations++
		r.known[conv] = true
		lost = append(lost, conv)
	})
	if err != nil {
		return err
	}
	// The lost records to be made anew (those whose log reads in full),
	// with their current members, as their logs say.
	current := map[ulid.ULID]map[ulid.ULID]bool{}
	for _, conv := range lost {
		p, why, err := r.read(conv, record.Conv{}, true)
		if err != nil {
			return err
		}
		if why == "" {
			current[conv] = map[ulid.ULID]bool{}
			for u, m := range p.roles {
				if m.Role != model.RoleNone {
					current[conv][u] = true
				}
			}
		}
	}
	if err := r.positionsInUse(lost, current); err != nil {
		return err
	}
	// A store's position behind what is in use lost writes, and cannot
	// bound where a lost record was that no entry of its own places (a
	// shared feed's entries hold no position): devices may hold positions
	// past any it could be given. Marked before the first commit, which
	// raises the store's position: a rerun would not see it behind.
	if garbled || r.inUse > feedPos {
		for conv := range current {
			if r.placed[conv] {
				continue
			}
			if err := r.newEpoch(); err != nil {
				return err
			}
			r.fixed("new epoch at the server's next start: a lost record's feed position and the store's could not be recovered")
			break
		}
	}
	// The store's position goes past them before anything is deleted: a
	// rebuild stopped after deleting a stray entry at the greatest
	// position, and run again, does not take that position again.
	if garbled || r.maxFeedPos > feedPos {
		r.fixed("store's feed position raised past every one in use")
		feedPos = r.maxFeedPos
		r.b.Set(keys.Meta(keys.MetaFeedPos), record.AppendUint(nil, feedPos))
		if err := r.commit(); err != nil {
			return err
		}
		r.b = r.st.NewBatch()
	}
	err = scan(r.v, []byte{keys.TConv}, func(k, val []byte) error {
		conv, ok := keys.ParseID(k, 1)
		if !ok || len(k) != 17 {
			return nil
		}
		rec, err := record.DecodeConv(val)
		if err != nil {
			return nil // lost
		}
		return r.conv(conv, rec, false)
	})
	if err != nil {
		return err
	}
	// Lost records take positions past every one in use, in an order a
	// rerun keeps: one rebuilt before a stop holds its position then.
	for _, conv := range lost {
		if err := r.conv(conv, record.Conv{}, true); err != nil {
			return err
		}
	}
	for _, step := range []func() error{r.feeds, r.userFeed, r.receipts, r.usages, r.strayMembers, r.upgradeDone, r.accounts, r.quotas} {
		if err := step(); err != nil {
			return err
		}
	}
	if r.maxFeedPos > feedPos {
		return r.set(keys.Meta(keys.MetaFeedPos), record.AppendUint(nil, r.maxFeedPos))
	}
	return nil
}

// positionsInUse raises maxFeedPos, the records' and the store's, to the
// greatest position a feed entry or the user feed holds (inUse): the
// store's may have fallen behind them, or be garbled. The members' entries
// of a conversation whose record was lost may sit up to maxEntryLag below
// its feed position, which is not known: maxFeedPos goes as far past them
// as that.
//
// A lost record that a current member's entry (current, as its log says)
// places is noted in placed.
func (r *rebuilder) positionsInUse(lost []ulid.ULID, current map[ulid.ULID]map[ulid.ULID]bool) error {
	isLost := make(map[ulid.ULID]bool, len(lost))
	for _, conv := range lost {
		isLost[conv] = true
	}
	r.inUse = r.maxFeedPos
	for _, t := range []byte{keys.TFeed, keys.TUFeed, keys.TUFeedIdx} {
		err := scan(r.v, []byte{t}, func(k, val []byte) error {
			var pos, lag uint64
			switch t {
			case keys.TUFeedIdx:
				pos, _ = record.DecodeUint(val)
			case keys.TFeed:
				var conv ulid.ULID
				_, pos, conv, _ = keys.ParseFeed(k)
				if isLost[conv] {
					lag = maxEntryLag
					// A current member's entry is within the lag of the
					// lost position; a former one's (at their detach
					// position) says nothing of it.
					u, _, _, _ := keys.ParseFeed(k)
					r.placed[conv] = r.placed[conv] || current[conv][u]
				}
			default:
				_, pos, _, _ = keys.ParseFeed(k)
			}
			r.inUse = max(r.inUse, pos)
			r.maxFeedPos = max(r.maxFeedPos, pos+lag)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// logsWithoutRecord calls fn with every conversation that has ops but no
// record, stepping from one conversation's log to the next.
func (r *rebuilder) logsWithoutRecord(fn func(conv ulid.ULID)) error {
	lo, hi := keys.Prefix([]byte{keys.TOp})
	it, err := r.v.Iter(lo, hi)
	if err != nil {
		return err
	}
	for ok := it.First(); ok; {
		conv, valid := keys.ParseID(it.Key(), 1)
		if !valid {
			r.unfixed("malformed op key %x", it.Key())
			ok = it.Next()
			continue
		}
		has, err := r.v.Has(keys.ID1(keys.TConv, conv))
		if err != nil {
			_ = it.Close()
			return err
		}
		if !has {
			fn(conv)
		}
		_, next := keys.Prefix(keys.ID1(keys.TOp, conv))
		ok = it.SeekGE(next)
	}
	return it.Close()
}

// replay is what a conversation's log implies.
type replay struct {
	head     uint64
	messages []uint64 // messages up to each seq, from seq 1
	dots     []seqDot
	byID     []idSeq // every op's id and seq, sorted by id once read
	title    string
	roles    map[ulid.ULID]record.Member
	edits    map[ulid.ULID][]uint64 // edit seqs by target
	deleted  map[ulid.ULID]bool     // ids of deleted messages
	erased   []record.Op
	recount  []uint64 // seqs of ops whose message count is wrong
	// raised holds, per user, the last seq of an op that raised their read
	// marker to itself (readRaiser): where a marker lost is made anew.
	raised map[ulid.ULID]uint64
	// usage is what its ops count for each user; undecodable says an op
	// did not decode, whose user it cannot count.
	usage       map[ulid.ULID]int64
	undecodable bool
}

type idSeq struct {
	id  ulid.ULID
	seq uint64
}

// conv rebuilds what conv's log implies.
// A lost record (lost: one that does not decode, or none) is made anew.
func (r *rebuilder) conv(conv ulid.ULID, rec record.Conv, lost bool) error {
	p, why, err := r.read(conv, rec, lost)
	if err != nil {
		return err
	}
	for u, n := range p.usage {
		r.usage[u] += n
	}
	r.usageWrong = r.usageWrong || p.undecodable
	if why != "" {
		r.unfixed("conversation %s: %s; left as found", conv, why)
		r.kept[conv] = true
		return nil
	}
	r.rep.Ops += int(p.head)
	for _, step := range []func(ulid.ULID, *replay) error{r.recount, r.opIDs, r.editIndex, r.erase, r.dotIndex} {
		if err := step(conv, p); err != nil {
			return err
		}
	}
	if err := r.members(conv, &rec, p, lost); err != nil {
		return err
	}
	return r.markers(conv, p)
}

// read replays conv's log, and returns why it cannot be rebuilt from it,
// if it cannot: it does not read in full, or it lost ops from its end.
func (r *rebuilder) read(conv ulid.ULID, rec record.Conv, lost bool) (*replay, string, error) {
	p, why, err := r.replay(conv)
	if err != nil || why != "" {
		return p, why, err
	}
	end, what, err := r.logEnd(conv, rec, lost, p)
	if err == nil && end > p.head {
		why = fmt.Sprintf("its log ends at seq %d, but its %s goes to seq %d: ops were lost from its end", p.head, what, end)
	}
	return p, why, err
}

// logEnd returns the greatest seq that anything but conv's log says it
// holds, and what says so: its record's head, its op-id and dot indexes,
// its members' and devices' markers (which never pass the head). A log
// that ends before it lost ops from its end, which no gap shows. An index
// entry of an op the log holds (its id, its dot) is only a wrong one.
func (r *rebuilder) logEnd(conv ulid.ULID, rec record.Conv, lost bool, p *replay) (end uint64, what string, err error) {
	last := map[ulid.ULID]uint64{} // each device's last dot in the log
	for _, d := range p.dots {
		last[d.dot.Device] = d.dot.N
	}
	saw := func(seq uint64, by string) {
		if seq > end {
			end, what = seq, by
		}
	}
	if !lost {
		saw(rec.Head, "record's head")
	}
	err = scan(r.v, keys.ID1(keys.TOpID, conv), func(k, val []byte) error {
		if _, id, ok := keys.ParseID2(k); ok {
			if _, inLog := p.seqOf(id); inLog {
				return nil
			}
		}
		if seq, err := record.DecodeUint(val); err == nil {
			saw(seq, "op-id index")
		}
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	err = scan(r.v, keys.ID1(keys.TDot, conv), func(k, val []byte) error {
		if run, err := decodeDotRun(k, val); err == nil && run.last() > last[run.dev] {
			saw(run.seq+run.count-1, "dot index")
		}
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	for _, t := range []byte{keys.TUserMark, keys.TDevMark} {
		err = scan(r.v, keys.ID1(t, conv), func(_, val []byte) error {
			if m, err := record.DecodeMarker(val); err == nil {
				saw(max(m.Delivered, m.Read, m.PublicRead), "markers")
			}
			return nil
		})
		if err != nil {
			return 0, "", err
		}
	}
	return end, what, nil
}

// replay reads conv's log, noting the ops whose message count is wrong.
// It returns why when the log cannot be read in full; its ops still count
// for their users' usage (replay.usage). It changes nothing.
func (r *rebuilder) replay(conv ulid.ULID) (*replay, string, error) {
	p := &replay{
		roles:   map[ulid.ULID]record.Member{},
		edits:   map[ulid.ULID][]uint64{},
		deleted: map[ulid.ULID]bool{},
		usage:   map[ulid.ULID]int64{},
		raised:  map[ulid.ULID]uint64{},
	}
	dots := map[ulid.ULID]uint64{}
	var why string
	err := scan(r.v, keys.ID1(keys.TOp, conv), func(k, val []byte) error {
		_, s, ok := keys.ParseOp(k)
		if why == "" && (!ok || s != p.head+1) {
			why = fmt.Sprintf("the log has a gap after seq %d", p.head)
		}
		op, err := record.DecodeOp(conv, s, val)
		if err != nil {
			if why == "" {
				why = fmt.Sprintf("seq %d: %v", s, err)
			}
			p.undecodable = true
			return nil
		}
		r.owners.add(op.Dot.Device, op.User)
		if why != "" {
			// The rest of the log still counts for its users' usage.
			p.usage[op.User] += opUsage(&op.Op, op.Erased)
			return nil
		}
		dots[op.Dot.Device]++
		if op.Dot.N != dots[op.Dot.Device] {
			why = fmt.Sprintf("seq %d has dot %s, where the log implies %d", s, op.Dot, dots[op.Dot.Device])
			p.usage[op.User] += opUsage(&op.Op, op.Erased)
			return nil
		}
		p.head = s
		messages := uint64(0)
		if len(p.messages) > 0 {
			messages = p.messages[len(p.messages)-1]
		}
		if op.Kind == model.KindMessage {
			messages++
		}
		p.messages = append(p.messages, messages)
		p.dots = append(p.dots, seqDot{s, op.Dot})
		p.byID = append(p.byID, idSeq{op.ID, s})
		p.usage[op.User] += opUsage(&op.Op, op.Erased)
		switch op.Kind {
		case model.KindCreate:
			p.title = op.Title
			p.roles[op.User] = record.Member{Role: model.RoleOwner, Since: s}
		case model.KindSetTitle:
			p.title = op.Title
		case model.KindMemberAdd, model.KindMemberRole:
			p.roles[op.Member] = record.Member{Role: op.Role, Since: s}
		case model.KindMemberRemove:
			p.roles[op.Member] = record.Member{Role: model.RoleNone, Since: s, Title: p.title}
		case model.KindEdit:
			p.edits[op.Target] = append(p.edits[op.Target], s)
		case model.KindDelete:
			p.deleted[op.Target] = true
		}
		if who, ok := readRaiser(&op.Op, op.User); ok {
			p.raised[who] = s
		}
		if op.Erased {
			p.erased = append(p.erased, op)
		}
		if op.Messages != messages {
			p.recount = append(p.recount, s)
		}
		return nil
	})
	if err == nil && why == "" && p.head == 0 {
		why = "it has no log"
	}
	if err != nil || why == "" {
		slices.SortFunc(p.byID, func(a, b idSeq) int { return a.id.Compare(b.id) })
		for i := 1; i < len(p.byID); i++ {
			if p.byID[i].id == p.byID[i-1].id {
				why = fmt.Sprintf("op id %s is at both seq %d and seq %d", p.byID[i].id, p.byID[i-1].seq, p.byID[i].seq)
				break
			}
		}
	}
	return p, why, err
}

// recount fixes the message counts of ops that have them wrong.
func (r *rebuilder) recount(conv ulid.ULID, p *replay) error {
	for _, s := range p.recount {
		op, err := readOp(r.v, conv, s)
		if err != nil {
			return err
		}
		op.Messages = p.messages[s-1]
		r.fixed("ops' message counts")
		if err := r.set(keys.Op(conv, s), record.AppendOp(nil, &op)); err != nil {
			return err
		}
	}
	return nil
}

// seqOf returns the seq of the op with id, if the log has it.
func (p *replay) seqOf(id ulid.ULID) (uint64, bool) {
	i, ok := slices.BinarySearchFunc(p.byID, id, func(e idSeq, id ulid.ULID) int { return e.id.Compare(id) })
	if !ok {
		return 0, false
	}
	return p.byID[i].seq, true
}

// opIDs makes conv's op-id index the log's ids, merging the index (in id
// order) with the log's ids sorted.
func (r *rebuilder) opIDs(conv ulid.ULID, p *replay) error {
	i := 0
	setTo := func(e idSeq) error {
		r.fixed("op-id index entries set")
		return r.set(keys.ID2(keys.TOpID, conv, e.id), record.AppendUint(nil, e.seq))
	}
	err := scan(r.v, keys.ID1(keys.TOpID, conv), func(k, val []byte) error {
		_, id, ok := keys.ParseID2(k)
		for ; ok && i < len(p.byID) && p.byID[i].id.Compare(id) < 0; i++ {
			if err := setTo(p.byID[i]); err != nil {
				return err
			}
		}
		if !ok || i == len(p.byID) || p.byID[i].id != id {
			r.fixed("op-id index entries deleted")
			return r.del(k)
		}
		e := p.byID[i]
		i++
		if seq, err := record.DecodeUint(val); err != nil || seq != e.seq {
			return setTo(e)
		}
		return nil
	})
	for ; err == nil && i < len(p.byID); i++ {
		err = setTo(p.byID[i])
	}
	return err
}

// editIndex makes conv's edit index the log's edits.
func (r *rebuilder) editIndex(conv ulid.ULID, p *replay) error {
	type edit struct {
		target ulid.ULID
		seq    uint64
	}
	want := map[edit]bool{}
	for target, seqs := range p.edits {
		for _, s := range seqs {
			want[edit{target, s}] = true
		}
	}
	err := scan(r.v, keys.ID1(keys.TEdit, conv), func(k, _ []byte) error {
		_, target, seq, ok := keys.ParseEdit(k)
		if ok && want[edit{target, seq}] {
			delete(want, edit{target, seq})
			return nil
		}
		r.fixed("edit index entries deleted")
		return r.del(k)
	})
	for e := range want {
		if err != nil {
			break
		}
		r.fixed("edit index entries set")
		err = r.set(keys.Edit(conv, e.target, e.seq), nil)
	}
	return err
}

// erase erases the bodies of deleted messages and of their edits where a
// delete left them, and says which erased ops no delete explains.
func (r *rebuilder) erase(conv ulid.ULID, p *replay) error {
	for _, op := range p.erased {
		target := op.ID
		if op.Kind == model.KindEdit {
			target = op.Target
		}
		if !p.deleted[target] {
			r.unfixed("conversation %s seq %d: erased, but message %s was never deleted", conv, op.Seq, target)
		}
	}
	for target := range p.deleted {
		seqs := p.edits[target]
		if s, ok := p.seqOf(target); ok {
			seqs = append(seqs[:len(seqs):len(seqs)], s)
		}
		for _, s := range seqs {
			op, err := readOp(r.v, conv, s)
			if err != nil {
				return err
			}
			if op.Erased {
				continue
			}
			r.usage[op.User] -= opUsage(&op.Op, false)
			op.Hash = model.PayloadHash(&op.Op)
			op.Erased, op.Body, op.ContentType = true, nil, ""
			op.Messages = p.messages[s-1]
			r.fixed("bodies of deleted messages and their edits erased")
			if err := r.set(keys.Op(conv, s), record.AppendOp(nil, &op)); err != nil {
				return err
			}
		}
	}
	return nil
}

// dotIndex rewrites conv's dot index from the log when it does not
// cover the log's dots exactly (checkDotRuns): as runs of each device's
// consecutive dots at consecutive seqs. An index that does is left as
// it is, however its runs are cut.
func (r *rebuilder) dotIndex(conv ulid.ULID, p *replay) error {
	bad := false
	err := checkDotRuns(r.v, conv, p.dots, func(string, ...any) { bad = true })
	if err != nil || !bad {
		return err
	}
	r.fixed("dot indexes of conversations rewritten")
	err = scan(r.v, keys.ID1(keys.TDot, conv), func(k, _ []byte) error { return r.del(k) })
	if err != nil {
		return err
	}
	// The runs of each device, open while its dots go on at the next seq.
	type run struct {
		first seqDot
		count uint64
	}
	open := map[ulid.ULID]*run{}
	var val []byte
	put := func(ru *run) error {
		val = record.AppendDotRun(val[:0], ru.first.seq, ru.count)
		return r.set(keys.Dot(conv, ru.first.dot.Device, ru.first.dot.N), val)
	}
	var prev *run
	for _, d := range p.dots {
		ru := open[d.dot.Device]
		if ru != nil && ru == prev {
			ru.count++
			continue
		}
		if ru != nil {
			if err := put(ru); err != nil {
				return err
			}
		}
		ru = &run{d, 1}
		open[d.dot.Device], prev = ru, ru
	}
	for _, ru := range open {
		if err := put(ru); err != nil {
			return err
		}
	}
	return nil
}

// members makes conv's record and its members' records what the log
// implies, and notes the feed entries and conversation lists they imply.
//
// A lost record gets a feed position of its own, past every other, so
// that every member's devices see the conversation changed, and the rest
// from the log; shared (Options.SharedFeedMembers) when some member has a
// shared entry for it or it has grown past the limit.
func (r *rebuilder) members(conv ulid.ULID, rec *record.Conv, p *replay, lost bool) error {
	old := *rec
	// The records as they are: by user, the table each is in.
	type found struct {
		m      record.Member
		tables []byte
	}
	have := map[ulid.ULID]*found{}
	for _, t := range []byte{keys.TMember, keys.TFormer} {
		err := scan(r.v, keys.ID1(t, conv), func(k, val []byte) error {
			_, u, ok := keys.ParseID2(k)
			if !ok {
				r.fixed("malformed member keys deleted")
				return r.del(k)
			}
			f := have[u]
			if f == nil {
				f = &found{}
				have[u] = f
			}
			f.tables = append(f.tables, t)
			if m, err := record.DecodeMember(val); err == nil {
				f.m = m // a former member's record, when in both tables
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	rec.Head, rec.Title = p.head, p.title
	rec.Messages = p.messages[len(p.messages)-1]
	rec.Members = 0
	if lost {
		r.maxFeedPos++
		rec.FeedPos, rec.EntryPos, rec.MoveEntries = r.maxFeedPos, r.maxFeedPos, true
	}
	if lag := rec.FeedPos - rec.EntryPos; rec.EntryPos > rec.FeedPos || lag > maxEntryLag || lag != 0 && (rec.MoveEntries || rec.SharedFeed) {
		rec.EntryPos = rec.FeedPos
	}
	want := map[ulid.ULID]record.Member{}
	for u, m := range p.roles {
		if m.Role != model.RoleNone {
			rec.Members++
		} else if f := have[u]; f != nil && f.m.Role == model.RoleNone && f.m.Since == m.Since && f.m.DetachedPos != 0 {
			// The record of this removal: one of an earlier
			// removal holds where that one detached them.
			m.DetachedPos = f.m.DetachedPos
		} else {
			// Detached where its next sync sees it, from a
			// position a member's entry cannot hold (MoveEntries).
			m.DetachedPos = rec.FeedPos
			rec.MoveEntries, rec.EntryPos = true, rec.FeedPos
			r.fixed("former members' lost detach positions set to their conversation's")
		}
		want[u] = m
	}
	if lost {
		rec.SharedFeed = int(rec.Members) > r.sharedMax
		for u, m := range want {
			if rec.SharedFeed || m.Role == model.RoleNone {
				continue
			}
			var err error
			if rec.SharedFeed, err = r.v.Has(keys.ID2(keys.TShared, u, conv)); err != nil {
				return err
			}
		}
	}
	// The conversation's record first: a Rebuild stopped before the
	// member records that a lost detach position moves finds them
	// lost again, and their conversation's entries still to move.
	if lost || *rec != old {
		r.fixed("conversation records set")
		if err := r.set(keys.ID1(keys.TConv, conv), record.AppendConv(nil, rec)); err != nil {
			return err
		}
	}
	// The right records before the wrong ones go: a Rebuild stopped in
	// between finds a former member's record, and its detach position,
	// in one table or the other.
	for u, m := range want {
		t := memberTable(m.Role)
		if f := have[u]; f == nil || !slices.Contains(f.tables, t) || f.m != m {
			r.fixed("member records set")
			if err := r.set(keys.ID2(t, conv, u), record.AppendMember(nil, &m)); err != nil {
				return err
			}
		}
		r.userConvs[string(keys.ID2(keys.TUserConv, u, conv))] = true
		switch {
		case m.Role != model.RoleNone && rec.SharedFeed:
			r.want[string(keys.ID2(keys.TShared, u, conv))] = true
		case m.Role != model.RoleNone:
			r.want[string(keys.Feed(keys.TFeed, u, rec.EntryPos, conv))] = true
		default:
			r.want[string(keys.Feed(keys.TFeed, u, m.DetachedPos, conv))] = true
		}
	}
	for u, f := range have {
		m, ok := want[u]
		for _, t := range f.tables {
			if !ok || t != memberTable(m.Role) {
				r.fixed("member records deleted from the wrong table")
				if err := r.del(keys.ID2(t, conv, u)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// markers fixes the message counts of conv's read markers, and makes anew
// the markers that do not decode: a user's as far as the log says they
// read, at least (sending, creating and being added raise it: readRaiser),
// and delivered as far as their devices' markers say; a device's is
// deleted (its device resumes from the cursors it sends, or from the
// start).
func (r *rebuilder) markers(conv ulid.ULID, p *replay) error {
	type devMark struct {
		dev       ulid.ULID
		delivered uint64
	}
	var devMarks []devMark
	err := scan(r.v, keys.ID1(keys.TDevMark, conv), func(k, val []byte) error {
		_, dev, ok := keys.ParseID2(k)
		m, err := record.DecodeMarker(val)
		if !ok || err != nil {
			r.fixed("device markers that did not decode, deleted")
			return r.del(k)
		}
		devMarks = append(devMarks, devMark{dev, m.Delivered})
		return nil
	})
	if err != nil {
		return err
	}
	// delivered is how far user's devices' markers say they hold conv:
	// read only for a user marker made anew. A device whose owner is
	// not known (or does not decode) counts for nobody.
	delivered := func(user ulid.ULID) (uint64, error) {
		n := uint64(0)
		for _, d := range devMarks {
			u, err := deviceUser(r.v, d.dev)
			if errors.Is(err, ErrNotFound) || corrupt(err) {
				continue
			}
			if err != nil {
				return 0, err
			}
			if u == user {
				n = max(n, d.delivered)
			}
		}
		return n, nil
	}
	return scan(r.v, keys.ID1(keys.TUserMark, conv), func(k, val []byte) error {
		m, err := record.DecodeMarker(val)
		if err != nil {
			_, u, ok := keys.ParseID2(k)
			if !ok {
				r.unfixed("conversation %s: marker key %x: %v", conv, k, err)
				return nil
			}
			held, err := delivered(u)
			if err != nil {
				return err
			}
			read := min(p.raised[u], p.head)
			m = record.Marker{Delivered: max(read, min(held, p.head)), Read: read, PublicRead: read}
			if read > 0 {
				m.ReadMessages, m.ReadCounted = p.messages[read-1], true
			}
			r.fixed("read markers that did not decode, made anew from the log and the devices' markers")
			return r.set(k, record.AppendMarker(nil, &m))
		}
		if !m.ReadCounted {
			return nil
		}
		fixed := m
		if m.Read == 0 || m.Read > p.head {
			fixed.ReadCounted, fixed.ReadMessages = false, 0
		} else {
			fixed.ReadMessages = p.messages[m.Read-1]
		}
		if fixed == m {
			return nil
		}
		r.fixed("read markers' message counts")
		return r.set(k, record.AppendMarker(nil, &fixed))
	})
}

// feeds makes the feed entries and the users' conversation lists the ones
// the member records imply, but for conversations left as found.
func (r *rebuilder) feeds() error {
	what := map[byte]string{keys.TFeed: "feed entries", keys.TShared: "shared feed entries", keys.TUserConv: "users' conversation list entries"}
	for _, t := range []struct {
		table byte
		want  map[string]bool
		conv  func(k []byte) (ulid.ULID, bool)
	}{
		{keys.TFeed, r.want, func(k []byte) (ulid.ULID, bool) { _, _, c, ok := keys.ParseFeed(k); return c, ok }},
		{keys.TShared, r.want, func(k []byte) (ulid.ULID, bool) { _, c, ok := keys.ParseID2(k); return c, ok }},
		{keys.TUserConv, r.userConvs, func(k []byte) (ulid.ULID, bool) { _, c, ok := keys.ParseID2(k); return c, ok }},
	} {
		err := scan(r.v, []byte{t.table}, func(k, _ []byte) error {
			if t.want[string(k)] {
				delete(t.want, string(k))
				return nil
			}
			if conv, ok := t.conv(k); ok && r.kept[conv] {
				return nil
			}
			r.fixed("stray " + what[t.table] + " deleted")
			return r.del(k)
		})
		if err != nil {
			return err
		}
	}
	for _, want := range []map[string]bool{r.want, r.userConvs} {
		ks := make([]string, 0, len(want))
		for k := range want {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		for _, k := range ks {
			r.fixed("missing " + what[k[0]] + " set")
			if err := r.set([]byte(k), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// userFeed makes the user feed's entries and its index agree. The index
// says where each user's entry for a conversation is: an entry elsewhere
// goes, and one missing where it points is set. An entry of a user and
// conversation that the index lacks (or holds garbled) is indexed again,
// its key holding all the index needs (the greatest, if there are
// several), where the user has a member record in the conversation.
func (r *rebuilder) userFeed() error {
	type userConv struct{ user, conv ulid.ULID }
	idx := map[userConv]uint64{}
	garbled := map[userConv]bool{}
	err := scan(r.v, []byte{keys.TUFeedIdx}, func(k, val []byte) error {
		u, conv, ok := keys.ParseID2(k)
		if !ok {
			r.fixed("malformed user feed index entries deleted")
			return r.del(k)
		}
		pos, err := record.DecodeUint(val)
		if err != nil {
			garbled[userConv{u, conv}] = true
			return nil
		}
		idx[userConv{u, conv}] = pos
		r.maxFeedPos = max(r.maxFeedPos, pos)
		return nil
	})
	if err != nil {
		return err
	}
	found := map[userConv]bool{}
	orphans := map[userConv]uint64{} // unindexed entries' positions
	err = scan(r.v, []byte{keys.TUFeed}, func(k, _ []byte) error {
		u, pos, conv, ok := keys.ParseFeed(k)
		uc := userConv{u, conv}
		if at, indexed := idx[uc]; ok && indexed && at == pos {
			found[uc] = true
			return nil
		} else if !ok || indexed {
			r.fixed("user feed entries the index does not point at deleted")
			return r.del(k)
		}
		if member, err := r.hasMember(conv, u); err != nil || !member {
			if err == nil {
				r.fixed("user feed entries of no member deleted")
				err = r.del(k)
			}
			return err
		}
		if at, seen := orphans[uc]; seen { // in position order: this one is greater
			r.fixed("user feed entries the index does not point at deleted")
			if err := r.del(keys.Feed(keys.TUFeed, u, at, conv)); err != nil {
				return err
			}
		}
		orphans[uc] = pos
		return nil
	})
	if err != nil {
		return err
	}
	for uc, pos := range orphans {
		delete(garbled, uc)
		r.fixed("user feed index entries set from their entries")
		if err := r.set(keys.ID2(keys.TUFeedIdx, uc.user, uc.conv), record.AppendUint(nil, pos)); err != nil {
			return err
		}
	}
	for uc := range garbled {
		r.fixed("garbled user feed index entries deleted")
		if err := r.del(keys.ID2(keys.TUFeedIdx, uc.user, uc.conv)); err != nil {
			return err
		}
	}
	for uc, pos := range idx {
		if !found[uc] {
			r.fixed("missing user feed entries set")
			if err := r.set(keys.Feed(keys.TUFeed, uc.user, pos, uc.conv), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// strayMembers deletes the member records of conversations that have
// neither a record nor a log.
func (r *rebuilder) strayMembers() error {
	for _, t := range []byte{keys.TMember, keys.TFormer} {
		err := scan(r.v, []byte{t}, func(k, _ []byte) error {
			if conv, ok := keys.ParseID(k, 1); ok && r.known[conv] {
				return nil
			}
			r.fixed("member records of missing conversations deleted")
			return r.del(k)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// accounts repairs the account records (users' usernames, devices,
// tokens and devices' users) where they disagree, as accountFixes says
// how, from the store as Rebuild began and the users the logs' ops give
// their devices (owners, gathered by replay: every conversation's was
// read before this step).
func (r *rebuilder) accounts() error {
	fixes, err := accountFixes(r.v, r.owners)
	if err != nil {
		return err
	}
	for _, f := range fixes {
		if f.fix == "" {
			r.unfixed("%s", f.problem)
			continue
		}
		r.fixed(f.fix)
		for _, kv := range f.set {
			if err := r.set(kv.k, kv.v); err != nil {
				return err
			}
		}
		for _, k := range f.del {
			if err := r.del(k); err != nil {
				return err
			}
		}
	}
	return nil
}

// upgradeDone ends the store's upgrade to format 8, which moves the
// records of former members apart as the store opens, where it left a
// record that did not decode, and with it its mark, which keeps a server
// from starting (Engine.moveFormerMembers): the records Rebuild could
// repair, it has; one it could not is of a conversation left as found.
func (r *rebuilder) upgradeDone() error {
	pending, err := r.v.Has(keys.Meta(keys.MetaFormerMove))
	if err != nil || !pending {
		return err
	}
	r.fixed("store's upgrade to format 8 ended")
	return r.del(keys.Meta(keys.MetaFormerMove))
}

// hasMember reports whether user has a member record in conv, current or
// former, as the store held it: whether the user may have an entry of
// their own for conv.
func (r *rebuilder) hasMember(conv, user ulid.ULID) (bool, error) {
	for _, t := range []byte{keys.TMember, keys.TFormer} {
		if has, err := r.v.Has(keys.ID2(t, conv, user)); err != nil || has {
			return has, err
		}
	}
	return false, nil
}

// receipts deletes the marks of waiting receipts of conversations that do
// not exist: with neither a record nor a log.
func (r *rebuilder) receipts() error {
	return scan(r.v, []byte{keys.TReceipts}, func(k, _ []byte) error {
		if conv, ok := keys.ParseID1(k); ok && r.known[conv] {
			return nil
		}
		r.fixed("waiting receipts of missing conversations deleted")
		return r.del(k)
	})
}

// quotas deletes the quota records that do not decode, or are of users
// with no record: the server's quota is what applies to those users
// already (Engine.loadQuotas), and check would report them for good.
func (r *rebuilder) quotas() error {
	return scan(r.v, []byte{keys.TQuota}, func(k, val []byte) error {
		user, ok := keys.ParseID1(k)
		q, err := record.DecodeUint(val)
		switch {
		case !ok || err != nil || q > MaxQuota:
			r.fixed("quota records that did not decode deleted (the server's quota applies to their users; ferryd set-quota sets theirs anew)")
			return r.del(k)
		}
		switch has, err := r.v.Has(keys.ID1(keys.TUser, user)); {
		case err != nil:
			return err
		case !has:
			r.fixed("quotas of users with no record deleted")
			return r.del(k)
		}
		return nil
	})
}

// usages makes each user's usage what their ops count.
func (r *rebuilder) usages() error {
	if r.usageWrong {
		r.unfixed("users' usage left as found: an op that does not decode counts for a user it does not name")
		return nil
	}
	err := scan(r.v, []byte{keys.TUsage}, func(k, val []byte) error {
		user, ok := keys.ParseID1(k)
		n, err := record.DecodeUint(val)
		want := r.usage[user]
		delete(r.usage, user)
		switch {
		case !ok || want == 0:
			r.fixed("usage records deleted")
			return r.del(k)
		case err != nil || int64(n) != want:
			r.fixed("usage records set")
			return r.set(k, record.AppendUint(nil, uint64(want)))
		}
		return nil
	})
	for user, n := range r.usage {
		if err != nil {
			break
		}
		if n != 0 {
			r.fixed("usage records set")
			err = r.set(keys.ID1(keys.TUsage, user), record.AppendUint(nil, uint64(n)))
		}
	}
	return err
}
