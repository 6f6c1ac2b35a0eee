package clientsdk

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk/internal/kv"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/compression"
	"github.com/ferrysync/ferry/internal/opid"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

// Device is one Ferry device: a profile with its identity, a local replica
// of its conversations, and an outbox. It works offline; Start keeps it in
// sync with the server in the background.
//
// A Device is safe for concurrent use.
type Device struct {
	opts options
	log  *slog.Logger
	db   *kv.DB

	mu    sync.Mutex // guards everything below, and replica writes
	creds *credentials
	owner string // the user whose replica this is ("" for none yet)
	// profileChanges counts SetDisplayName's answers: a member list asked
	// for before one keeps the name it set (fetchMembers).
	profileChanges uint64
	epoch          string
	feedPos        uint64
	convs          map[ulid.ULID]*convRecord
	states         map[ulid.ULID]*model.State // folded ops, built on demand, at most maxStates
	stateUse       map[ulid.ULID]uint64       // when each state was last used (stateTick)
	stateTick      uint64
	nextLocal      uint64                   // outbox sequence
	pending        map[ulid.ULID]pendingRef // op id -> outbox entry
	failed         map[ulid.ULID][]uint64   // conv -> its failed entries' local seqs, ascending
	changed        uint64                   // local order of changes, for sorting
	// catchUpFrom is changed before the first catch-up since the last one
	// that completed, while catchingUp: a conversation placed above it was
	// placed by a catch-up cut off, which the next one places again
	// (catchUpRanks). Receiver's state, under mu.
	catchUpFrom uint64
	catchingUp  bool
	maxBody     int // the server's body limit, once known
	maxMessage  int // the server's message limit, once known
	status      Status
	subs        map[*Subscription]struct{}
	users       map[ulid.ULID]userRecord
	members     map[ulid.ULID][]memberRecord
	// memberRefresh lists conversations whose member list (and so the
	// members' usernames) must be fetched again: true when due, false
	// while being fetched (refreshMembers).
	memberRefresh map[ulid.ULID]bool
	// refreshing is set while a refresher runs (refreshInBackground),
	// refreshWake holds a round due, and refreshOuter (under mu) bounds
	// the next round.
	refreshing   atomic.Bool
	refreshWake  chan struct{}
	refreshOuter context.Context
	// refreshNotBefore (under mu) holds refreshes back after one could
	// not reach the server.
	refreshNotBefore time.Time
	closed           bool

	// entropyMu guards entropy, which op ids (ids) and conversation ids
	// draw from.
	entropyMu sync.Mutex
	entropy   io.Reader
	ids       *opid.Source

	outboxWake chan struct{} // new outbox entries (capacity 1)
	ackWake    chan struct{} // markers to send soon (capacity 1)
	// resumeAckWake: delivered markers that nobody else sees, which can
	// wait resumeAckDelay (capacity 1).
	resumeAckWake chan struct{}

	runMu  sync.Mutex // guards the fields down to syncs
	cancel context.CancelFunc
	done   chan struct{}
	loops  uint64 // Start's loops begun
	stops  uint64 // Stop calls
	// synced is closed, and replaced, when a SyncOnce succeeds: Start's
	// loop, waiting out its backoff, connects again at once, the server
	// being there. Guarded by mu.
	synced chan struct{}
	// closing is set as Close begins; halts counts the halts under way,
	// while Close, Logout or a sign-in stops all syncing (halt): Start and
	// SyncOnce refuse meanwhile, and halt cancels the SyncOnce calls under
	// way (onces) and waits for them (syncs), which no new call joins as
	// it waits.
	closing bool
	halts   int
	onces   map[*context.CancelFunc]struct{}
	syncs   sync.WaitGroup
	bg      sync.WaitGroup // background work of sessions (member refreshes)

	stream streamGate // one Sync stream at a time (stream.go)
}

// Open opens the device profile in dir, creating it if needed. The profile
// holds the device's identity (after Register or Login) and its replica.
// The device's token is in it: a dir that others could read (made before,
// 0755 say) is made readable by its owner alone, where the process may
// (it owns it; not on Windows, which keeps no such bits). A profile that
// another process has open is refused with ErrProfileInUse.
func Open(dir string, opts ...Option) (*Device, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ferry: create profile directory: %w", err)
	}
	if fi, err := os.Stat(dir); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		// The setgid and sticky bits stay. A dir of another user's, or a
		// file system that refuses, stays as it is.
		keep := os.ModePerm | os.ModeSetgid | os.ModeSetuid | os.ModeSticky
		_ = os.Chmod(dir, fi.Mode()&keep&^0o077)
	}
	return open(dir, vfs.Default, opts)
}

// OpenMemory opens a device whose replica lives in memory: for tests and
// ephemeral devices. Everything is lost on Close.
func OpenMemory(opts ...Option) (*Device, error) { return open("replica", vfs.NewMem(), opts) }

func open(dir string, fs vfs.FS, opts []Option) (*Device, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt.apply(&o)
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	o.resumeAckDelay = max(o.resumeAckDelay, o.ackDelay)
	db, err := kv.Open(fs.PathJoin(dir, "replica"), fs, o.logger)
	if errors.Is(err, kv.ErrInUse) {
		return nil, fmt.Errorf("%w: %s (%v)", ErrProfileInUse, dir, err)
	}
	if err != nil {
		return nil, err
	}
	d := &Device{
		opts:          o,
		log:           o.logger,
		db:            db,
		convs:         map[ulid.ULID]*convRecord{},
		states:        map[ulid.ULID]*model.State{},
		stateUse:      map[ulid.ULID]uint64{},
		subs:          map[*Subscription]struct{}{},
		users:         map[ulid.ULID]userRecord{},
		members:       map[ulid.ULID][]memberRecord{},
		pending:       map[ulid.ULID]pendingRef{},
		failed:        map[ulid.ULID][]uint64{},
		memberRefresh: map[ulid.ULID]bool{},
		refreshWake:   make(chan struct{}, 1),
		maxBody:       model.MaxBodyBytes,
		maxMessage:    4 << 20, // the server's default
		entropy:       o.entropy,
		outboxWake:    make(chan struct{}, 1),
		ackWake:       make(chan struct{}, 1),
		resumeAckWake: make(chan struct{}, 1),
	}
	if d.entropy == nil {
		d.entropy = rand.Reader
	}
	if d.ids, err = opid.New(d.entropy); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("clientsdk: op ids: %w", err)
	}
	if err := d.load(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return d, nil
}

// load reads the profile's small state into memory: credentials, position,
// conversations, users.
func (d *Device) load() error {
	var c credentials
	if ok, err := getJSON(d.db, metaKey("creds"), &c); err != nil {
		return err
	} else if ok {
		d.creds = &c
	}
	if _, err := getJSON(d.db, metaKey("owner"), &d.owner); err != nil {
		return err
	}
	if d.owner == "" && d.creds != nil { // a profile signed in before owners were kept
		d.owner = d.creds.User
	}
	if _, err := getJSON(d.db, metaKey("epoch"), &d.epoch); err != nil {
		return err
	}
	if _, err := getJSON(d.db, metaKey("feedpos"), &d.feedPos); err != nil {
		return err
	}
	err := scanPrefix(d.db, []byte{tConv}, func(k, v []byte) error {
		var id ulid.ULID
		copy(id[:], k[1:])
		rec := &convRecord{}
		if err := decodeJSON(v, rec); err != nil {
			return err
		}
		d.convs[id] = rec
		d.changed = max(d.changed, rec.Changed)
		return nil
	})
	if err != nil {
		return err
	}
	err = scanPrefix(d.db, []byte{tUser}, func(k, v []byte) error {
		var id ulid.ULID
		copy(id[:], k[1:])
		var u userRecord
		if err := decodeJSON(v, &u); err != nil {
			return err
		}
		d.users[id] = u
		return nil
	})
	if err != nil {
		return err
	}
	err = scanPrefix(d.db, []byte{tMembers}, func(k, v []byte) error {
		var id ulid.ULID
		copy(id[:], k[1:])
		var ms []memberRecord
		if err := decodeJSON(v, &ms); err != nil {
			return err
		}
		d.members[id] = ms
		return nil
	})
	if err != nil {
		return err
	}
	err = scanPrefix(d.db, []byte{tOutbox}, func(k, v []byte) error {
		var e outboxEntry
		if err := decodeJSON(v, &e); err != nil {
			return err
		}
		op, err := decodeOp(e.Op)
		if err != nil {
			return err
		}
		id, err := ulid.ParseStrict(op.GetId())
		if err != nil {
			return fmt.Errorf("%w: outbox op id: %v", errCorrupt, err)
		}
		conv, err := ulid.ParseStrict(e.Conv)
		if err != nil {
			return fmt.Errorf("%w: outbox conversation id: %v", errCorrupt, err)
		}
		d.pending[id] = pendingRef{local: binary.BigEndian.Uint64(k[1:]), conv: conv}
		return nil
	})
	if err != nil {
		return err
	}
	err = scanPrefix(d.db, []byte{tFailed}, func(k, v []byte) error {
		var e failedEntry
		if err := decodeJSON(v, &e); err != nil {
			return err
		}
		conv, err := ulid.ParseStrict(e.Conv)
		if err != nil {
			return fmt.Errorf("%w: failed op's conversation id: %v", errCorrupt, err)
		}
		d.failed[conv] = append(d.failed[conv], binary.BigEndian.Uint64(k[1:]))
		return nil
	})
	if err != nil {
		return err
	}
	for _, t := range []byte{tOutbox, tFailed} {
		it, err := d.db.Iter([]byte{t}, []byte{t + 1})
		if err != nil {
			return err
		}
		if it.Last() {
			d.nextLocal = max(d.nextLocal, binary.BigEndian.Uint64(it.Key()[1:]))
		}
		if err := it.Close(); err != nil {
			return err
		}
	}
	if err := d.indexDeletes(); err != nil {
		return err
	}
	d.status = Status{State: StateOffline}
	return nil
}

// indexDeletes indexes (tDeleted) the deletes that a replica written by
// an SDK before the index stored, once: the first Open after the upgrade
// reads every op the replica holds. Without it, a copy of a message the
// replica holds the delete of, stored later from the outbox, would keep
// its body.
func (d *Device) indexDeletes() error {
	var done bool
	if _, err := getJSON(d.db, metaKey("deletes-indexed"), &done); err != nil || done {
		return err
	}
	b := d.db.NewBatch()
	err := scanPrefix(d.db, []byte{tOp}, func(k, v []byte) error {
		p, err := decodeOp(v)
		if err != nil {
			return err
		}
		if del, ok := p.GetPayload().(*ferryv1.Op_Delete); ok {
			var conv ulid.ULID
			copy(conv[:], k[1:])
			target, err := ulid.ParseStrict(del.Delete.GetTargetId())
			if err != nil {
				return fmt.Errorf("%w: a stored delete's target: %v", errCorrupt, err)
			}
			b.Set(deletedKey(conv, target), nil)
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.Set(metaKey("deletes-indexed"), encodeJSON(true))
	return d.db.Commit(b)
}

// Close stops syncing (Start's and any SyncOnce under way, which then
// returns ErrClosed) and closes the replica. Pending ops stay in the
// outbox and go out after the next Open and Start.
func (d *Device) Close() error {
	d.halt(true)
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	for s := range d.subs {
		s.closeLocked()
	}
	d.mu.Unlock()
	return d.db.Close()
}

// halt stops all syncing: Start's loop, the SyncOnce calls under way, and
// their sessions' background work. closing makes Start and SyncOnce
// refuse from then on (Close).
func (d *Device) halt(closing bool) {
	d.runMu.Lock()
	d.closing = d.closing || closing
	d.halts++
	for cancel := range d.onces {
		(*cancel)()
	}
	d.runMu.Unlock()
	d.Stop()
	d.syncs.Wait() // before bg.Wait: their sessions add to bg
	d.bg.Wait()
}

// resume ends a halt (Logout's, a sign-in's): Start and SyncOnce run
// again once no other is under way.
func (d *Device) resume() {
	d.runMu.Lock()
	d.halts--
	d.runMu.Unlock()
}

// refuseRun is why Start and SyncOnce cannot run now: ErrClosed, or
// ErrNotSignedIn while Logout signs the device out. runMu is held.
func (d *Device) refuseRun() error {
	switch {
	case d.closing:
		return ErrClosed
	case d.halts > 0:
		return ErrNotSignedIn
	}
	return nil
}

// Account is the identity of a signed-in device.
type Account struct {
	Server   string
	User     ulid.ULID
	Device   ulid.ULID
	Username string
	// Refused says the server refused the device's credentials when last
	// asked (the device was revoked, or logged out from another): the
	// device syncs again once it logs in again (Login, on this profile).
	Refused bool
}

// ErrProfileInUse is returned by Open for a profile that another process
// has open, or another Device of this one: a profile is one device, opened
// by one Device at a time.
var ErrProfileInUse = errors.New("ferry: the profile is in use: open in another process, or in another Device of this one")

// ErrNoServer is returned by the calls that reach the server (Register
// and Login first) on a profile that knows no server: one not signed in,
// opened without WithServer.
var ErrNoServer = errors.New("ferry: no server: pass WithServer")

// ErrNotSignedIn is returned by calls that need an identity before Register
// or Login.
var ErrNotSignedIn = errors.New("ferry: this profile is not signed in: register or log in first")

// Account returns the device's identity, or ErrNotSignedIn (ErrClosed
// after Close).
func (d *Device) Account() (Account, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Account{}, ErrClosed
	}
	if d.creds == nil {
		return Account{}, ErrNotSignedIn
	}
	return d.creds.account(), nil
}

func (c *credentials) account() Account {
	return Account{
		Server:   c.Server,
		User:     ulid.MustParseStrict(c.User),
		Device:   ulid.MustParseStrict(c.Device),
		Username: c.Username,
		Refused:  c.Refused,
	}
}

func (d *Device) server() (string, error) {
	if d.opts.server != "" {
		return d.opts.server, nil // checked by Open
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.creds != nil && d.creds.Server != "" {
		return d.creds.Server, nil
	}
	return "", ErrNoServer
}

// clients returns the RPC clients, authenticated when signed in.
func (d *Device) clients() (ferryv1connect.AccountServiceClient, ferryv1connect.ConversationServiceClient, ferryv1connect.SyncServiceClient, error) {
	url, err := d.server()
	if err != nil {
		return nil, nil, nil, err
	}
	hc := d.opts.httpClient
	if hc == nil {
		hc = defaultHTTPClient(url)
	}
	var ics []connect.ClientInterceptor
	d.mu.Lock()
	if d.creds != nil {
		ics = append(ics, wire.Bearer(d.creds.Token))
	}
	d.mu.Unlock()
	topts := []connecthttp.Option{connecthttp.WithReadMaxBytes(64 << 20)}
	if d.opts.compress {
		topts = append(topts,
			connecthttp.WithCompressors(compression.NewZstd(), compression.NewGzip()),
			connecthttp.WithSendCompression("zstd"),
			connecthttp.WithCompressMinBytes(compression.MinBytes))
	} else {
		topts = append(topts, connecthttp.WithCompressors())
	}
	c := connect.NewClient(connecthttp.NewTransport(hc, url, topts...), ics...)
	return ferryv1connect.NewAccountServiceClient(c), ferryv1connect.NewConversationServiceClient(c), ferryv1connect.NewSyncServiceClient(c), nil
}

var (
	h2cOnce sync.Once
	h2c     *http.Client
	h2Once  sync.Once
	h2      *http.Client
)

// defaultHTTPClient speaks HTTP/2: h2c for http:// URLs, TLS otherwise.
// The devices of a process share it, and a connection left idle (the last
// device on it stopped or closed) closes after idleConnTimeout.
func defaultHTTPClient(url string) *http.Client {
	if strings.HasPrefix(url, "http://") {
		h2cOnce.Do(func() {
			p := new(http.Protocols)
			p.SetUnencryptedHTTP2(true)
			h2c = &http.Client{Transport: &http.Transport{Protocols: p, DialContext: (&net.Dialer{}).DialContext, IdleConnTimeout: idleConnTimeout}}
		})
		return h2c
	}
	h2Once.Do(func() {
		h2 = &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}, IdleConnTimeout: idleConnTimeout}}
	})
	return h2
}

// idleConnTimeout is net/http's DefaultTransport's: a Transport made
// without one keeps idle connections open for good.
const idleConnTimeout = 90 * time.Second

// authedClients is clients for the calls that need an identity:
// ErrNotSignedIn before Register or Login, ErrClosed after Close.
func (d *Device) authedClients() (ferryv1connect.AccountServiceClient, ferryv1connect.ConversationServiceClient, ferryv1connect.SyncServiceClient, error) {
	if _, err := d.Account(); err != nil {
		return nil, nil, nil, err
	}
	return d.clients()
}

// Register creates a user on the server with this device as its first, and
// signs the profile in. Like Login, it refuses a signed-in profile unless
// the server refused its credentials.
func (d *Device) Register(ctx context.Context, username, password, deviceName string) error {
	if err := d.signedOut(); err != nil {
		return err
	}
	if d.replacingRefused() {
		d.halt(false) // nothing of the refused session lands after the sign-in
		defer d.resume()
	}
	acc, _, _, err := d.clients()
	if err != nil {
		return err
	}
	resp, err := acc.Register(ctx, &ferryv1.RegisterRequest{Username: username, Password: password, DeviceName: deviceName})
	if err != nil {
		return fmt.Errorf("ferry: register %s: %w", username, err)
	}
	return d.signIn(resp.GetSession())
}

// Login adds this device to an existing user and signs the profile in.
// A signed-in profile is refused (log out first), unless the server has
// refused its credentials (the device was revoked): then Login replaces
// them, as after a Logout.
func (d *Device) Login(ctx context.Context, username, password, deviceName string) error {
	if err := d.signedOut(); err != nil {
		return err
	}
	if d.replacingRefused() {
		d.halt(false) // nothing of the refused session lands after the sign-in
		defer d.resume()
	}
	acc, _, _, err := d.clients()
	if err != nil {
		return err
	}
	resp, err := acc.Login(ctx, &ferryv1.LoginRequest{Username: username, Password: password, DeviceName: deviceName})
	if err != nil {
		return fmt.Errorf("ferry: log in %s: %w", username, err)
	}
	return d.signIn(resp.GetSession())
}

// errSignedIn is what Register and Login return on a signed-in profile,
// before they ask the server for anything.
var errSignedIn = errors.New("ferry: this profile is already signed in; log out first")

// signedOut reports why the profile cannot sign in: ErrClosed, or
// errSignedIn.
func (d *Device) signedOut() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return ErrClosed
	case d.creds != nil && !d.creds.Refused:
		return errSignedIn
	}
	return nil
}

// token returns the token the profile signs its calls with ("" when
// signed out).
func (d *Device) token() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.creds == nil {
		return ""
	}
	return d.creds.Token
}

// noteRefused marks the profile's credentials refused when err is the
// server refusing token, and they are still the profile's.
func (d *Device) noteRefused(token string, err error) {
	if token == "" || connect.CodeOf(err) != connect.CodeUnauthenticated {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.setRefusedLocked(token, true)
}

// noteAcceptedLocked clears the refusal of the profile's credentials
// when a session signed with token was welcomed: the refusal was not for
// good (a proxy that dropped the header, a server restored from a backup
// that knew the device). d.mu is held.
func (d *Device) noteAcceptedLocked(token string) { d.setRefusedLocked(token, false) }

// setRefusedLocked keeps, with the credentials, whether the server
// refused them, if token is still theirs. d.mu is held.
func (d *Device) setRefusedLocked(token string, refused bool) {
	if token == "" || d.creds == nil || d.creds.Token != token || d.creds.Refused == refused {
		return
	}
	c := *d.creds
	c.Refused = refused
	b := d.db.NewBatch()
	b.Set(metaKey("creds"), encodeJSON(&c))
	if err := d.db.Commit(b); err != nil {
		d.log.Warn("cannot keep whether the server refused the credentials", "err", err)
		return
	}
	d.creds = &c
}

// replacingRefused reports whether the profile is signed in with
// credentials the server refused, which a sign-in replaces.
func (d *Device) replacingRefused() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.creds != nil && d.creds.Refused
}

// signIn keeps the session's credentials. A profile whose replica is
// another user's (who logged out) starts over empty: that user's
// conversations are not the new user's to read, and the replica's feed
// position is not theirs to resume from.
func (d *Device) signIn(s *ferryv1.DeviceSession) error {
	url, err := d.server()
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.creds != nil && !d.creds.Refused {
		return errSignedIn
	}
	c := &credentials{Server: url, User: s.GetUserId(), Device: s.GetDeviceId(), Username: s.GetUsername(), Token: s.GetToken()}
	b := d.db.NewBatch()
	wipe := d.owner != c.User && (d.owner != "" || d.epoch != "" || d.feedPos != 0 || len(d.convs) > 0 || len(d.pending) > 0)
	if wipe {
		b.DeleteRange([]byte{tMeta + 1}, []byte{0xff})
		b.Delete(metaKey("epoch"))
		b.Delete(metaKey("feedpos"))
	}
	b.Set(metaKey("owner"), encodeJSON(c.User))
	b.Set(metaKey("creds"), encodeJSON(c))
	// A sign-in is a new device, whose dots count from 1 in every
	// conversation. Ops the replica kept in its outbox (the same user's,
	// queued on the device before) stay that device's, with its dots:
	// the server takes a user's ops from any of their devices, and
	// answers one it stored already as a duplicate.
	var counted []ulid.ULID
	if !wipe {
		for id, rec := range d.convs {
			if rec.NextDot != 0 {
				r := *rec
				r.NextDot = 0
				b.Set(idKey(tConv, id), encodeJSON(&r))
				counted = append(counted, id)
			}
		}
	}
	if err := d.db.Commit(b); err != nil {
		return err
	}
	for _, id := range counted {
		d.convs[id].NextDot = 0
	}
	if wipe {
		d.log.Info("signed in as another user: the replica starts over", "user", c.User, "previous", d.owner)
		d.epoch, d.feedPos, d.changed = "", 0, 0
		clear(d.convs)
		clear(d.states)
		clear(d.stateUse)
		clear(d.pending)
		clear(d.failed)
		clear(d.users)
		clear(d.members)
		clear(d.memberRefresh)
		d.emit(Overflow{}) // re-read: what the subscribers show is gone
	}
	d.creds, d.owner = c, c.User
	return nil
}

// Logout revokes this device on the server and forgets its credentials.
// The replica stays on disk, for the same user's next Login to resume
// from; a Login or Register as another user empties it first. Delete the
// profile directory to remove it. When the server cannot be reached to
// revoke the device, Logout returns the error and the device stays
// signed in, Start's loop syncing on if it ran.
func (d *Device) Logout(ctx context.Context) error {
	a, err := d.Account()
	if err != nil {
		return err
	}
	acc, _, _, err := d.clients()
	if err != nil {
		return err
	}
	d.runMu.Lock()
	running := d.cancel != nil
	d.runMu.Unlock()
	d.halt(false) // nothing of this user's lands after a next user's sign-in
	d.runMu.Lock()
	stops := d.stops // halt's own Stop included
	d.runMu.Unlock()
	signedOut := false
	defer func() {
		d.runMu.Lock()
		defer d.runMu.Unlock()
		d.halts-- // resume
		// Still signed in (the server could not be told): sync on as
		// before, unless the application stopped syncing meanwhile, or
		// another Logout halted it.
		if !signedOut && running && d.stops == stops {
			_ = d.startLocked()
		}
	}()
	if _, err := acc.RevokeDevice(ctx, &ferryv1.RevokeDeviceRequest{DeviceId: a.Device.String()}); err != nil &&
		connect.CodeOf(err) != connect.CodeUnauthenticated {
		return fmt.Errorf("ferry: log out: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.db.NewBatch()
	b.Delete(metaKey("creds"))
	if err := d.db.Commit(b); err != nil {
		return err
	}
	d.creds, signedOut = nil, true
	return nil
}

// DeviceInfo is one of the user's devices.
type DeviceInfo struct {
	ID      ulid.ULID
	Name    string
	Current bool
}

// Devices lists the user's devices (from the server).
func (d *Device) Devices(ctx context.Context) ([]DeviceInfo, error) {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return nil, err
	}
	resp, err := acc.ListDevices(ctx, &ferryv1.ListDevicesRequest{})
	if err != nil {
		return nil, fmt.Errorf("ferry: list devices: %w", err)
	}
	var out []DeviceInfo
	for _, dv := range resp.GetDevices() {
		id, err := ulid.ParseStrict(dv.GetId())
		if err != nil {
			return nil, fmt.Errorf("ferry: server sent device id %q: %w", dv.GetId(), err)
		}
		out = append(out, DeviceInfo{ID: id, Name: dv.GetName(), Current: dv.GetCurrent()})
	}
	return out, nil
}

// Usage is what the user stores on the server against its quota.
type Usage struct {
	// Bytes is what the user's ops hold: each op's body, content type,
	// title and reaction key, and 32 bytes for the rest of it. A deleted
	// message and its edits count nothing more.
	Bytes int64
	// Quota is the most the user may store on this server: the server's
	// quota for each user, or one its operator set for them; 0 when there
	// is none. An op that would take Bytes past it fails, with the
	// reason QUOTA_EXCEEDED (Failed).
	Quota int64
}

// Usage asks the server what the user stores against its quota.
func (d *Device) Usage(ctx context.Context) (Usage, error) {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return Usage{}, err
	}
	resp, err := acc.GetAccount(ctx, &ferryv1.GetAccountRequest{})
	if err != nil {
		return Usage{}, fmt.Errorf("ferry: usage: %w", err)
	}
	return Usage{Bytes: int64(min(resp.GetUsageBytes(), math.MaxInt64)), Quota: int64(min(resp.GetQuotaBytes(), math.MaxInt64))}, nil
}

// RevokeDevice revokes one of the user's other devices.
func (d *Device) RevokeDevice(ctx context.Context, id ulid.ULID) error {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return err
	}
	if _, err := acc.RevokeDevice(ctx, &ferryv1.RevokeDeviceRequest{DeviceId: id.String()}); err != nil {
		return fmt.Errorf("ferry: revoke device %s: %w", id, err)
	}
	return nil
}

// ChangePassword sets the user's password, given the current one. With
// signOutOthers, the server revokes every other device of the user in the
// same change (this one stays signed in), and it returns how many. A wrong
// current password fails with connect.CodePermissionDenied, and such
// tries are throttled as failed logins are.
func (d *Device) ChangePassword(ctx context.Context, current, next string, signOutOthers bool) (signedOut int, err error) {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return 0, err
	}
	resp, err := acc.ChangePassword(ctx, &ferryv1.ChangePasswordRequest{CurrentPassword: current, NewPassword: next, SignOutOtherDevices: signOutOthers})
	if err != nil {
		return 0, fmt.Errorf("ferry: change password: %w", err)
	}
	return int(resp.GetDevicesSignedOut()), nil
}

// SetDisplayName sets the user's display name, as other users see it
// with their username: in the next member list or lookup their devices
// ask the server for (Members, LookupUser), nothing pushed to them. Empty,
// or a name that shows nothing (spaces, invisible characters), sets it
// back to the username. The server refuses a name longer than 64 bytes
// or with control characters or line breaks (connect.CodeInvalidArgument).
func (d *Device) SetDisplayName(ctx context.Context, name string) (User, error) {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return User{}, err
	}
	resp, err := acc.SetDisplayName(ctx, &ferryv1.SetDisplayNameRequest{DisplayName: name})
	if err != nil {
		return User{}, fmt.Errorf("ferry: set display name: %w", err)
	}
	u := resp.GetUser()
	id, err := ulid.ParseStrict(u.GetId())
	if err != nil {
		return User{}, fmt.Errorf("ferry: server sent user id %q: %w", u.GetId(), err)
	}
	// This device shows the name at once, unless its user signed out
	// meanwhile: the answer is not the new user's.
	d.mu.Lock()
	if !d.closed && d.owner == u.GetId() {
		d.profileChanges++
		d.learnUserLocked(id, u.GetUsername(), u.GetDisplayName())
	}
	d.mu.Unlock()
	return User{ID: id, Username: u.GetUsername(), DisplayName: u.GetDisplayName()}, nil
}

// RenameDevice renames one of the user's devices, this one too, as
// Devices lists them. Empty names it "unnamed device". The server refuses
// a name longer than 64 bytes or with control characters
// (connect.CodeInvalidArgument), and a device that is not the user's or
// was revoked (connect.CodeNotFound).
func (d *Device) RenameDevice(ctx context.Context, id ulid.ULID, name string) (DeviceInfo, error) {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return DeviceInfo{}, err
	}
	resp, err := acc.RenameDevice(ctx, &ferryv1.RenameDeviceRequest{DeviceId: id.String(), Name: name})
	if err != nil {
		return DeviceInfo{}, fmt.Errorf("ferry: rename device %s: %w", id, err)
	}
	dv := resp.GetDevice()
	return DeviceInfo{ID: id, Name: dv.GetName(), Current: dv.GetCurrent()}, nil
}

// User is another user's public profile.
type User struct {
	ID          ulid.ULID
	Username    string
	DisplayName string
}

// LookupUser finds a user by username (on the server).
func (d *Device) LookupUser(ctx context.Context, username string) (User, error) {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return User{}, err
	}
	resp, err := acc.LookupUsers(ctx, &ferryv1.LookupUsersRequest{Usernames: []string{username}})
	if err != nil {
		return User{}, fmt.Errorf("ferry: look up %s: %w", username, err)
	}
	if len(resp.GetUsers()) == 0 {
		return User{}, fmt.Errorf("ferry: no user named %q", username)
	}
	u := resp.GetUsers()[0]
	id, err := ulid.ParseStrict(u.GetId())
	if err != nil {
		return User{}, fmt.Errorf("ferry: server sent user id %q: %w", u.GetId(), err)
	}
	d.rememberUser(id, u.GetUsername(), u.GetDisplayName())
	return User{ID: id, Username: u.GetUsername(), DisplayName: u.GetDisplayName()}, nil
}

// BlockUser stops the user id from adding this user to conversations: the
// server rejects such an add (its author's device lists it as failed,
// with the reason PERMISSION_DENIED). Conversations they share stay.
func (d *Device) BlockUser(ctx context.Context, id ulid.ULID) error {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return err
	}
	if _, err := acc.BlockUser(ctx, &ferryv1.BlockUserRequest{UserId: id.String()}); err != nil {
		return fmt.Errorf("ferry: block user %s: %w", id, err)
	}
	return nil
}

// UnblockUser lets the user id add this user to conversations again.
func (d *Device) UnblockUser(ctx context.Context, id ulid.ULID) error {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return err
	}
	if _, err := acc.UnblockUser(ctx, &ferryv1.UnblockUserRequest{UserId: id.String()}); err != nil {
		return fmt.Errorf("ferry: unblock user %s: %w", id, err)
	}
	return nil
}

// BlockedUsers lists the users this user blocks (on the server), in id
// order.
func (d *Device) BlockedUsers(ctx context.Context) ([]User, error) {
	acc, _, _, err := d.authedClients()
	if err != nil {
		return nil, err
	}
	resp, err := acc.ListBlockedUsers(ctx, &ferryv1.ListBlockedUsersRequest{})
	if err != nil {
		return nil, fmt.Errorf("ferry: blocked users: %w", err)
	}
	out := make([]User, 0, len(resp.GetUsers()))
	for _, u := range resp.GetUsers() {
		id, err := ulid.ParseStrict(u.GetId())
		if err != nil {
			return nil, fmt.Errorf("ferry: server sent user id %q: %w", u.GetId(), err)
		}
		out = append(out, User{ID: id, Username: u.GetUsername(), DisplayName: u.GetDisplayName()})
	}
	return out, nil
}

func (d *Device) rememberUser(id ulid.ULID, username, display string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.learnUserLocked(id, username, display)
	}
}

// learnUserLocked keeps user id's names and, when they changed, tells
// the conversations whose messages show them (namesEvents). d.mu is
// held.
func (d *Device) learnUserLocked(id ulid.ULID, username, display string) {
	b := d.db.NewBatch()
	_, knew := d.users[id]
	if !d.rememberUserLocked(b, id, username, display) {
		return
	}
	if err := d.db.Commit(b); err != nil {
		d.log.Warn("remember user", "err", err)
		return
	}
	d.emit(d.namesEvents(map[string]bool{id.String(): true}, knew)...)
}

// rememberUserLocked is rememberUser, written to b. It reports whether
// the user's names changed. d.mu is held.
func (d *Device) rememberUserLocked(b *kv.Batch, id ulid.ULID, username, display string) bool {
	rec := userRecord{Username: username, DisplayName: display}
	if d.users[id] == rec {
		return false
	}
	d.users[id] = rec
	b.Set(idKey(tUser, id), encodeJSON(rec))
	return true
}

// newOpID returns a new op id: see package opid for why the ops of one
// Device share most of their ids' entropy.
func (d *Device) newOpID() (ulid.ULID, error) {
	d.entropyMu.Lock()
	defer d.entropyMu.Unlock()
	return d.ids.Next(ulid.Timestamp(d.opts.clock.Now()))
}

// newConvID returns a new conversation id: all of its 80 bits of entropy
// random, since every member ever added learns it.
func (d *Device) newConvID() (ulid.ULID, error) {
	d.entropyMu.Lock()
	defer d.entropyMu.Unlock()
	return ulid.New(ulid.Timestamp(d.opts.clock.Now()), d.entropy)
}
