package engine

import (
	"bytes"
	"fmt"
	"maps"
	"slices"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
)

// The account records of a store (users, usernames, devices, tokens and
// devices' users) are checked and repaired as one: Check reports each
// disagreement among them, and Rebuild repairs it, from the same list
// (accountFixes), so that what one reports the other fixes or says it
// cannot.
//
// What is the truth, record by record:
//   - a user's record (TUser) is its own: nothing else holds their
//     password's hash. One that does not decode cannot be made anew;
//   - a username's record (TUsername) follows the user records: the user
//     whose record has the name. One that no user's record accounts for
//     stays, unless its user's record names them otherwise: freeing a name
//     would let someone else take it;
//   - a device's record (TDevice, keyed by its user) holds its token's
//     hash. One that does not decode is made anew from the one token
//     record that names the device, the device keeping its token (its
//     name is lost, its creation time is its id's); with none, the device
//     is revoked: as revoking does, the record goes, and the device signs
//     in again;
//   - a token's record (TToken) follows the live device record that holds
//     its hash; one that none holds is stray (its device revoked) and goes;
//   - a device's record of its user (TDeviceOf), which says whose ops a
//     device may push again, follows the device's record, or, for a
//     device revoked since, the ops it wrote, which the writer stored with
//     their user; one of a device with neither is kept, or deleted when it
//     does not decode.
type accountFix struct {
	problem string // what Check reports
	// fix is the kind of repair, as Rebuild counts it; empty where
	// Rebuild cannot repair it (it then reports problem as unfixed).
	fix string
	set []keyValue
	del [][]byte
}

type keyValue struct{ k, v []byte }

// lostDeviceName names a device whose record was made anew from its
// token: the user sees it in their list of devices for what it is.
const lostDeviceName = "unnamed device (its record was rebuilt)"

// logOwners gathers, from the ops of the conversations' logs, the user
// each authoring device wrote as: the writer stores each op with its
// device's user, so a device's ops all have one.
type logOwners struct {
	of       map[ulid.ULID]ulid.ULID
	conflict map[ulid.ULID][2]ulid.ULID // devices whose ops have two users
}

func newLogOwners() *logOwners {
	return &logOwners{of: map[ulid.ULID]ulid.ULID{}, conflict: map[ulid.ULID][2]ulid.ULID{}}
}

// add notes that device wrote an op as user.
func (o *logOwners) add(device, user ulid.ULID) {
	switch u, ok := o.of[device]; {
	case !ok:
		o.of[device] = user
	case u != user:
		if _, seen := o.conflict[device]; !seen {
			o.conflict[device] = [2]ulid.ULID{u, user}
		}
	}
}

type userDevice struct{ user, device ulid.ULID }

// tokenRec is a token record as read: its key, and what it names, or why
// it does not decode.
type tokenRec struct {
	key []byte
	val userDevice
	err error
}

// accountFixes reads every account record of v and returns what disagrees,
// in the order of the records' keys, as Check reports it and Rebuild
// repairs it; logs holds what the logs say of the devices' users.
func accountFixes(v *store.View, logs *logOwners) ([]accountFix, error) {
	var out []accountFix
	unfixed := func(format string, args ...any) {
		out = append(out, accountFix{problem: fmt.Sprintf(format, args...)})
	}

	// Users.
	users := map[ulid.ULID]record.User{}
	unread := map[ulid.ULID]bool{}
	named := map[string][]ulid.ULID{} // username -> the users whose record has it
	err := scan(v, []byte{keys.TUser}, func(k, val []byte) error {
		u, ok := keys.ParseID1(k)
		if !ok {
			unfixed("malformed user key %x", k)
			return nil
		}
		rec, err := record.DecodeUser(val)
		if err != nil {
			unread[u] = true
			unfixed("user %s: %v: they cannot sign in, and nothing else holds what it held (their password's hash): restore it from a backup", u, err)
			return nil
		}
		users[u] = rec
		named[rec.Username] = append(named[rec.Username], u)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// owner is the one user whose record has name, if one alone has it.
	owner := func(name string) (ulid.ULID, bool) {
		if us := named[name]; len(us) == 1 {
			return us[0], true
		}
		return ulid.ULID{}, false
	}
	for _, name := range slices.Sorted(maps.Keys(named)) {
		if us := named[name]; len(us) > 1 {
			unfixed("users %s are all named %q", us, name)
		}
	}

	// Usernames.
	indexed := map[string]bool{}
	err = scan(v, []byte{keys.TUsername}, func(k, val []byte) error {
		name := string(k[1:])
		indexed[name] = true
		id, err := record.DecodeID(val)
		want, ok := owner(name)
		switch {
		case err != nil && ok:
			out = append(out, accountFix{
				problem: fmt.Sprintf("username %q: %v", name, err),
				fix:     "username records that did not decode, made anew from their users' records",
				set:     []keyValue{{bytes.Clone(k), record.AppendID(nil, want)}},
			})
		case err != nil:
			unfixed("username %q: %v, and no user's record has the name (left, so that no one else takes it)", name, err)
		case unread[id] || (ok && id == want):
		case ok:
			out = append(out, accountFix{
				problem: fmt.Sprintf("username %q names user %s, where user %s has the name", name, id, want),
				fix:     "username records set to the user whose record has the name",
				set:     []keyValue{{bytes.Clone(k), record.AppendID(nil, want)}},
			})
		case len(named[name]) > 1:
			// Reported with the users.
		default:
			rec, has := users[id]
			if !has {
				unfixed("username %q names user %s, who has no record: restore it from a backup (the name is kept, so that no one else takes it)", name, id)
				break
			}
			if len(unread) > 0 {
				// One of them may be the name's: kept till they are read.
				unfixed("username %q names user %s, whose record names them %q (kept while user records do not decode, one of which may have the name)", name, id, rec.Username)
				break
			}
			out = append(out, accountFix{
				problem: fmt.Sprintf("username %q names user %s, whose record names them %q", name, id, rec.Username),
				fix:     "username records of users named otherwise, deleted",
				del:     [][]byte{bytes.Clone(k)},
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(named)) {
		if indexed[name] || len(named[name]) > 1 {
			continue
		}
		u := named[name][0]
		out = append(out, accountFix{
			problem: fmt.Sprintf("user %s (%q): no username record", u, name),
			fix:     "missing username records made anew",
			set:     []keyValue{{keys.Username(name), record.AppendID(nil, u)}},
		})
	}

	// Tokens, read first: a device's record that does not decode is made
	// anew from its token.
	var tokens []tokenRec
	tokensOf := map[userDevice][][]byte{}
	err = scan(v, []byte{keys.TToken}, func(k, val []byte) error {
		u, d, err := record.DecodeIDs(val)
		tokens = append(tokens, tokenRec{bytes.Clone(k), userDevice{u, d}, err})
		if err == nil {
			tokensOf[userDevice{u, d}] = append(tokensOf[userDevice{u, d}], bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	// Devices, read whole: whose each is by its record, and which token
	// hashes the live records that decode hold.
	type deviceEntry struct {
		key []byte
		id  userDevice
		rec record.Device
		err error // the record does not decode
	}
	var devices []deviceEntry
	recOwner := map[ulid.ULID]ulid.ULID{}
	holders := map[string][]userDevice{} // token key -> the live records that decode holding its hash
	err = scan(v, []byte{keys.TDevice}, func(k, val []byte) error {
		u, d, ok := keys.ParseID2(k)
		if !ok {
			unfixed("malformed device key %x", k)
			return nil
		}
		rec, err := record.DecodeDevice(val)
		devices = append(devices, deviceEntry{bytes.Clone(k), userDevice{u, d}, rec, err})
		recOwner[d] = u
		if err == nil && !rec.Revoked {
			tk := string(keys.Token(rec.TokenHash))
			holders[tk] = append(holders[tk], userDevice{u, d})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	// Devices whose user is in doubt (their ops have two, or their record
	// and their ops disagree), and tokens whose hash two records hold,
	// are left as found: their records, the tokens naming them and their
	// records of their user. Nothing here can tell which is right.
	doubt := map[ulid.ULID]bool{}
	for _, d := range slices.SortedFunc(maps.Keys(logs.conflict), ulid.ULID.Compare) {
		c := logs.conflict[d]
		unfixed("device %s wrote ops as user %s and as user %s", d, c[0], c[1])
		doubt[d] = true
	}
	for _, d := range slices.SortedFunc(maps.Keys(recOwner), ulid.ULID.Compare) {
		if lu, ok := logs.of[d]; ok && !doubt[d] && lu != recOwner[d] {
			unfixed("device %s is user %s's by its record, and wrote ops as user %s", d, recOwner[d], lu)
			doubt[d] = true
		}
	}
	shared := map[string]bool{}
	for _, tk := range slices.Sorted(maps.Keys(holders)) {
		if hs := holders[tk]; len(hs) > 1 {
			unfixed("devices %v all hold the hash of token %x", hs, tk[1:])
			shared[tk] = true
		}
	}
	untouched := func(tk string, names userDevice, decoded bool) bool {
		if shared[tk] || decoded && doubt[names.device] {
			return true
		}
		return slices.ContainsFunc(holders[tk], func(h userDevice) bool { return doubt[h.device] })
	}

	wantToken := map[string]userDevice{} // token key -> the live device holding its hash
	for _, de := range devices {
		u, d := de.id.user, de.id.device
		switch {
		case doubt[d]:
		case de.err != nil:
			// Its token: the one naming it whose hash no other record
			// holds.
			var ts [][]byte
			for _, tk := range tokensOf[de.id] {
				if len(holders[string(tk)]) == 0 {
					ts = append(ts, tk)
				}
			}
			if len(ts) != 1 {
				out = append(out, accountFix{
					problem: fmt.Sprintf("device %s of user %s: %v", d, u, de.err),
					fix:     "device records that did not decode, without one token record of the device, deleted (the devices are revoked, and sign in again)",
					del:     [][]byte{de.key},
				})
				break
			}
			rec := record.Device{Name: lostDeviceName, CreatedMs: int64(d.Time())}
			copy(rec.TokenHash[:], ts[0][1:])
			out = append(out, accountFix{
				problem: fmt.Sprintf("device %s of user %s: %v", d, u, de.err),
				fix:     "device records that did not decode, made anew from their tokens (the devices keep signing in; their names are lost)",
				set:     []keyValue{{de.key, record.AppendDevice(nil, &rec)}},
			})
			wantToken[string(ts[0])] = de.id
		case de.rec.Revoked:
			// Kept by stores from before revoking deleted the record.
		case shared[string(keys.Token(de.rec.TokenHash))]:
		default:
			wantToken[string(keys.Token(de.rec.TokenHash))] = de.id
		}
	}

	// Tokens follow the live devices' records.
	for _, t := range tokens {
		want, ok := wantToken[string(t.key)]
		delete(wantToken, string(t.key))
		switch {
		case ok && t.err != nil:
			out = append(out, accountFix{
				problem: fmt.Sprintf("token record %x: %v", t.key[1:], t.err),
				fix:     "token records that did not decode, made anew from their devices' records",
				set:     []keyValue{{t.key, record.AppendIDs(nil, want.user, want.device)}},
			})
		case ok && t.val != want:
			out = append(out, accountFix{
				problem: fmt.Sprintf("token record %x names device %s of user %s, where device %s of user %s holds its hash", t.key[1:], t.val.device, t.val.user, want.device, want.user),
				fix:     "token records set to the device holding their hash",
				set:     []keyValue{{t.key, record.AppendIDs(nil, want.user, want.device)}},
			})
		case ok, untouched(string(t.key), t.val, t.err == nil):
		case t.err != nil:
			out = append(out, accountFix{
				problem: fmt.Sprintf("token record %x: %v, and no device's record holds its hash", t.key[1:], t.err),
				fix:     "token records that did not decode, of no device, deleted",
				del:     [][]byte{t.key},
			})
		default:
			out = append(out, accountFix{
				problem: fmt.Sprintf("token record %x names device %s of user %s, which is revoked or holds another token", t.key[1:], t.val.device, t.val.user),
				fix:     "token records of no device (revoked, or holding another token) deleted",
				del:     [][]byte{t.key},
			})
		}
	}
	for _, k := range slices.Sorted(maps.Keys(wantToken)) {
		want := wantToken[k]
		out = append(out, accountFix{
			problem: fmt.Sprintf("device %s of user %s: no token record", want.device, want.user),
			fix:     "missing token records made anew from their devices' records",
			set:     []keyValue{{[]byte(k), record.AppendIDs(nil, want.user, want.device)}},
		})
	}

	// Devices' users follow the devices' records, or their ops.
	wantOwner := map[ulid.ULID]ulid.ULID{}
	why := map[ulid.ULID]string{}
	for d, u := range logs.of {
		if !doubt[d] {
			wantOwner[d], why[d] = u, "its ops"
		}
	}
	for d, u := range recOwner {
		if !doubt[d] {
			wantOwner[d], why[d] = u, "its record"
		}
	}
	err = scan(v, []byte{keys.TDeviceOf}, func(k, val []byte) error {
		d, ok := keys.ParseID1(k)
		if !ok {
			unfixed("malformed key %x of a device's record of its user", k)
			return nil
		}
		u, err := record.DecodeID(val)
		want, known := wantOwner[d]
		delete(wantOwner, d)
		switch {
		case doubt[d]:
		case err != nil && known:
			out = append(out, accountFix{
				problem: fmt.Sprintf("record of a device's user %x: %v", k[1:], err),
				fix:     "devices' records of their users that did not decode, made anew",
				set:     []keyValue{{bytes.Clone(k), record.AppendID(nil, want)}},
			})
		case err != nil:
			out = append(out, accountFix{
				problem: fmt.Sprintf("record of a device's user %x: %v, and the device has no record and no ops", k[1:], err),
				fix:     "devices' records of their users that did not decode, of devices with no record and no ops, deleted",
				del:     [][]byte{bytes.Clone(k)},
			})
		case known && u != want:
			out = append(out, accountFix{
				problem: fmt.Sprintf("device %s of user %s (by %s): its record of its user names %s", d, want, why[d], u),
				fix:     "devices' records of their users set to the user their device's record or ops give",
				set:     []keyValue{{bytes.Clone(k), record.AppendID(nil, want)}},
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, d := range slices.SortedFunc(maps.Keys(wantOwner), ulid.ULID.Compare) {
		u := wantOwner[d]
		out = append(out, accountFix{
			problem: fmt.Sprintf("device %s of user %s (by %s): no record of its user", d, u, why[d]),
			fix:     "missing devices' records of their users made anew",
			set:     []keyValue{{keys.ID1(keys.TDeviceOf, d), record.AppendID(nil, u)}},
		})
	}

	// Members, current and former, of the conversations that exist have
	// a user record. (A member record of a conversation that does not
	// exist is the conversations' check's.)
	for _, t := range []byte{keys.TMember, keys.TFormer} {
		var last ulid.ULID
		looked, exists := false, false
		err := scan(v, []byte{t}, func(k, _ []byte) error {
			conv, u, ok := keys.ParseID2(k)
			if !ok {
				return nil
			}
			if !looked || conv != last {
				has, err := v.Has(keys.ID1(keys.TConv, conv))
				if err != nil {
					return err
				}
				last, looked, exists = conv, true, has
			}
			if _, has := users[u]; exists && !has && !unread[u] {
				unfixed("member %s of conversation %s has no user record: restore it from a backup", u, conv)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
