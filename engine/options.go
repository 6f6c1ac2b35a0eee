package engine

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/clock"
)

// Options configure an Engine. The zero value is valid: every field has a
// default, written in its comment.
type Options struct {
	// FS is the filesystem the store lives on. Default: the operating
	// system's. Tests use vfs.NewMem or vfs.NewCrashableMem.
	FS vfs.FS
	// Logger receives the engine's and Pebble's logs. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock, for account and device timestamps. Default time.Now.
	// It never orders the log.
	Now func() time.Time
	// Rand is the entropy for ids, tokens and password salts. Default
	// crypto/rand.Reader. Calls are serialised, so it need not be safe for
	// concurrent use.
	Rand io.Reader
	// OnFatal is called once when a storage failure stops the engine.
	// Default: nothing beyond logging; every later write fails with ErrFailed.
	// Servers should exit.
	OnFatal func(error)
	// NewEpoch starts a new epoch on open, for a store restored by means
	// other than [Engine.Backup] (which marks its copies so that opening one
	// starts a new epoch by itself). Default false.
	NewEpoch bool
	// Existing opens a store that must exist, for tools that work on a
	// stopped server's store (ferryd check, backup and compact): Open
	// creates nothing and fails with ErrNotFound when dir holds no store,
	// starts no new epoch (NewEpoch must be false), and leaves a backup's
	// mark, so that the server that serves the copy still starts one.
	Existing bool

	// MinFreeDisk is the free space, in bytes, below which the engine
	// refuses new ops (Append) with ErrDiskFull, looking at the store's
	// file system at most once a second (by Clock): a store that fills
	// its disk fails, and refusing ops first keeps the server up, serving
	// reads, sessions and markers, until an operator frees space. On a disk
	// smaller than twenty times it, the engine keeps a twentieth free
	// instead. Default 512 MiB; negative: no check. A file system that
	// cannot tell its free space (vfs.NewMem) is not checked.
	MinFreeDisk int64

	// MemTableSize is Pebble's memtable size. Default 64 MiB.
	MemTableSize uint64
	// CacheSize is the room for blocks in Pebble's block cache. Default 64
	// MiB. Pebble charges memtables to the same cache: the store adds two
	// memtables' worth on top, so the store's memory is about CacheSize +
	// 2 × MemTableSize (192 MiB by default), and blocks have less room
	// while flushes fall behind. Every table's Bloom filter is cached there
	// too, about 1.25 bytes a key: past some 50 million keys the filters
	// alone fill 64 MiB, so size the cache to 1.25 bytes a key plus the
	// blocks read often.
	CacheSize int64
	// Compression is how the store compresses its tables: CompressSmall
	// (the default) or CompressFast. A store may be reopened with either.
	Compression Compression

	// MaxBodyBytes caps a message or edit body. Default 64 KiB; at most
	// model.MaxBodyBytes.
	MaxBodyBytes int
	// MaxOpsPerAppend caps the ops of one Append call. Default 1000.
	MaxOpsPerAppend int
	// MaxGroupOps caps the ops the writer puts in one commit; more wait for
	// the next. Default 8192.
	MaxGroupOps int
	// ReceiptMembers is the largest conversation whose members' markers are
	// shared with every member as read receipts. In larger conversations
	// markers only reach the user's own devices. Default 32.
	ReceiptMembers int
	// SharedFeedMembers is the largest conversation whose members each keep
	// a feed entry of their own for it, which a change to the conversation
	// moves: two writes per member. Past it the conversation's members
	// share one entry (its record), for good: a change writes nothing per
	// member, and a device catching up reads the record of each such
	// conversation its user is in. Default 32.
	SharedFeedMembers int
	// ReceiptDelay is how long receipts (a member's delivered and read
	// positions, shown to the other members) may wait before they move the
	// conversation in the members' feeds. The markers are durable at once;
	// only the news of them waits, so that the acks of every recipient of a
	// message move the conversation once instead of once each, and wake each
	// member's sessions once; a message in the meantime carries them. Each
	// conversation's receipts wait from their own first change, for the
	// delay (or at least half of it, when they go with others due). Default
	// 250ms (a tick a quarter of a second late is not seen; in a busy
	// group, receipts mostly ride on the next message); negative: no wait.
	ReceiptDelay time.Duration
	// Clock runs the ReceiptDelay timer. Default: the system clock.
	Clock clock.Clock
	// ConvCacheSize is how many conversations' write state (members, version
	// vector) the writer keeps in memory. Default 4096.
	ConvCacheSize int
	// AllowRegistration lets anyone create an account with Register.
	// Default false.
	AllowRegistration bool
	// MaxDevicesPerUser caps a user's devices that are not revoked; Login
	// beyond it fails until one is revoked. Default 100.
	MaxDevicesPerUser int
	// MaxMembers caps a conversation's members: adding one more is
	// rejected (ErrPrecondition) until one leaves or is removed. Each op
	// of a conversation goes to every member's devices, and GetConversation
	// lists them all in one message (up to some 140 bytes a member). A
	// conversation that had more before the cap was lowered keeps them.
	// Default 10,000.
	MaxMembers int
	// UserQuota caps the bytes one user's ops hold (Engine.Usage: each
	// op's body, content type, title and reaction key, and UsagePerOp):
	// an op that would take its user past it is rejected (ErrQuota). A
	// deleted message and its edits count nothing more, and the delete
	// counts UsagePerOp, so deleting one's messages makes room. What makes
	// room or lets a user leave always goes, and may take them past the
	// quota by what ops the quota does refuse allow (quotaApplies):
	// deleting one's own message, a member removal (leaving, too), making
	// a member owner who is not. A user's ops in
	// conversations they left count on, and they can no longer delete
	// them: a user whose room is all there has it back only when the
	// quota, which is everyone's, is raised. Each user's count is kept
	// whether or not there is a quota, so that one set later applies at
	// once. Default 0: no quota.
	UserQuota int64
	// MaxPasswordHashes caps concurrent password hashes (Register, Login),
	// each of which takes Password.MemoryKiB; more callers wait, and past
	// 64 waiting they are refused with ErrTooMany. Default GOMAXPROCS.
	MaxPasswordHashes int
	// Password sets the cost of password hashing (argon2id). Default: the
	// OWASP recommendation, 19 MiB and 2 passes.
	Password PasswordParams
}

// PasswordParams are argon2id parameters.
type PasswordParams struct {
	Time      uint32 // passes; default 2
	MemoryKiB uint32 // default 19456 (19 MiB)
	Threads   uint8  // default 1
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.FS == nil {
		o.FS = vfs.Default
	}
	if o.MinFreeDisk == 0 {
		o.MinFreeDisk = 512 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.MemTableSize == 0 {
		o.MemTableSize = 64 << 20
	}
	if o.CacheSize == 0 {
		o.CacheSize = 64 << 20
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = 64 << 10
	}
	if o.MaxOpsPerAppend == 0 {
		o.MaxOpsPerAppend = 1000
	}
	if o.MaxGroupOps == 0 {
		o.MaxGroupOps = 8192
	}
	if o.ReceiptMembers == 0 {
		o.ReceiptMembers = 32
	}
	if o.SharedFeedMembers == 0 {
		o.SharedFeedMembers = 32
	}
	if o.ReceiptDelay == 0 {
		o.ReceiptDelay = 250 * time.Millisecond
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.ConvCacheSize == 0 {
		o.ConvCacheSize = 4096
	}
	if o.MaxDevicesPerUser == 0 {
		o.MaxDevicesPerUser = 100
	}
	if o.MaxMembers == 0 {
		o.MaxMembers = 10_000
	}
	if o.MaxPasswordHashes == 0 {
		o.MaxPasswordHashes = runtime.GOMAXPROCS(0)
	}
	if o.Password.Time == 0 {
		o.Password.Time = 2
	}
	if o.Password.MemoryKiB == 0 {
		o.Password.MemoryKiB = 19456
	}
	if o.Password.Threads == 0 {
		o.Password.Threads = 1
	}
}

// Validate reports every problem with the options at once.
func (o *Options) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(!(o.Existing && o.NewEpoch), "NewEpoch is for serving a restored store, not with Existing")
	check(o.MaxBodyBytes > 0 && o.MaxBodyBytes <= model.MaxBodyBytes,
		"MaxBodyBytes must be between 1 and %d, got %d", model.MaxBodyBytes, o.MaxBodyBytes)
	check(o.MaxOpsPerAppend > 0, "MaxOpsPerAppend must be positive, got %d", o.MaxOpsPerAppend)
	check(o.MaxGroupOps >= o.MaxOpsPerAppend,
		"MaxGroupOps (%d) must be at least MaxOpsPerAppend (%d)", o.MaxGroupOps, o.MaxOpsPerAppend)
	check(o.ReceiptMembers >= 0, "ReceiptMembers must not be negative, got %d", o.ReceiptMembers)
	check(o.SharedFeedMembers > 0, "SharedFeedMembers must be positive, got %d", o.SharedFeedMembers)
	check(o.ConvCacheSize > 0, "ConvCacheSize must be positive, got %d", o.ConvCacheSize)
	check(o.MaxDevicesPerUser > 0, "MaxDevicesPerUser must be positive, got %d", o.MaxDevicesPerUser)
	check(o.UserQuota >= 0, "UserQuota must not be negative, got %d", o.UserQuota)
	check(o.MaxMembers > 0, "MaxMembers must be positive, got %d", o.MaxMembers)
	check(o.MaxPasswordHashes > 0, "MaxPasswordHashes must be positive, got %d", o.MaxPasswordHashes)
	check(o.MemTableSize >= 1<<20, "MemTableSize must be at least 1 MiB, got %d", o.MemTableSize)
	check(o.Compression == CompressFast || o.Compression == CompressSmall, "Compression must be CompressFast or CompressSmall, got %v", o.Compression)
	check(o.Password.MemoryKiB >= 8*uint32(o.Password.Threads),
		"Password.MemoryKiB must be at least 8 per thread, got %d", o.Password.MemoryKiB)
	return errors.Join(errs...)
}

// Compression is how the store compresses its tables (Options.Compression).
type Compression int

const (
	// CompressSmall compresses the store's two bottom levels, where most
	// of its history settles, with zstd, and the others with MinLZ.
	CompressSmall Compression = iota
	// CompressFast compresses every level with MinLZ: in the bench, a
	// tenth to a fifth less CPU per op in batched writes past 500k
	// messages (the compactions' zstd is gone), for about a fifth more
	// disk per op for chat text. Catch-ups read the same (a slowdown
	// measured once no longer showed; the README has the figures). Not
	// the default: the bench's stores are young, and a young store
	// compacts everything straight into its bottom level, where small
	// uses zstd; a large store spreads its compactions over more levels,
	// zstd only in the two at the bottom, where most of its history
	// stays. For writers short of CPU with disk to spare.
	CompressFast
)

// String is the setting's name, as ferryd's --store-compression takes it.
func (c Compression) String() string {
	switch c {
	case CompressFast:
		return "fast"
	case CompressSmall:
		return "small"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

func (c Compression) store() store.Compression {
	if c == CompressFast {
		return store.Fast
	}
	return store.Small
}
