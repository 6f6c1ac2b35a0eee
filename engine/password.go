package engine

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Passwords are hashed with argon2id and stored as PHC strings,
// "$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>", so that the parameters can
// be raised later without invalidating existing hashes.

const (
	saltBytes = 16
	hashBytes = 32
)

var b64 = base64.RawStdEncoding

// maxHashWaiters bounds the callers queued for a password hash.
const maxHashWaiters = 64

// hashSlot waits for one of Options.MaxPasswordHashes slots: each argon2
// hash takes Password.MemoryKiB, so unbounded concurrent sign-ins would
// exhaust memory. Callers beyond maxHashWaiters are refused at once.
func (e *Engine) hashSlot(ctx context.Context) (release func(), err error) {
	if e.hashWaiters.Add(1) > maxHashWaiters {
		e.hashWaiters.Add(-1)
		return nil, fmt.Errorf("%w: too many sign-ins at once; retry in a moment", ErrTooMany)
	}
	defer e.hashWaiters.Add(-1)
	select {
	case e.hashSem <- struct{}{}:
		return func() { <-e.hashSem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (e *Engine) hashPassword(password string) string {
	salt := make([]byte, saltBytes)
	e.randomBytes(salt)
	p := e.opts.Password
	sum := argon2.IDKey([]byte(password), salt, p.Time, p.MemoryKiB, p.Threads, hashBytes)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.MemoryKiB, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(sum))
}

var errBadHash = errors.New("malformed password hash")

// verifyPassword reports whether password matches the PHC string phc.
func verifyPassword(phc, password string) (bool, error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errBadHash
	}
	var memory, time uint32
	var threads uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &memory, &time, &threads); err != nil || threads == 0 {
		return false, errBadHash
	}
	salt, err := b64.DecodeString(parts[4])
	if err != nil {
		return false, errBadHash
	}
	want, err := b64.DecodeString(parts[5])
	if err != nil || len(want) == 0 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(password), salt, time, memory, threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}
