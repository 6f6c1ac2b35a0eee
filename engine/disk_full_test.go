package engine_test

import (
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/clock"
)

// TestDiskNearlyFullRefusesWrites: while the store's file system has less
// free space than MinFreeDisk, new ops are refused with ErrDiskFull,
// storing nothing; reads, markers and revocations go on. Once space is
// freed, the next look (a second later) accepts ops again. On a small
// disk, a twentieth of it is kept instead.
func TestDiskNearlyFullRefusesWrites(t *testing.T) {
	fs := vfs.NewMem()
	fake := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	e := enginetest.New(t, func(o *engine.Options) {
		o.FS, o.Clock, o.MinFreeDisk = fs, fake, 100<<20
	})
	alice := enginetest.Register(t, e, "alice")
	phone := enginetest.Login(t, e, "alice") // its refused ops take no dots: it sends no other
	conv := alice.Create("c")
	alice.Send(conv, "before")
	send := func(text string) error {
		_, err := e.Append(ctx, phone.Actor, []model.Op{phone.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(text), ContentType: "text/plain"})})
		return err
	}

	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 99 << 20, TotalBytes: 10 << 30})
	fake.Advance(time.Second) // the next write looks again
	if err := send("while full"); !errors.Is(err, engine.ErrDiskFull) || !e.DiskLow() {
		t.Fatalf("a message with 99 MiB free of 100: %v (low %v), want ErrDiskFull", err, e.DiskLow())
	}
	page, err := e.History(alice.Actor, conv, engine.HistoryQuery{})
	if err != nil || len(page.Ops) != 2 {
		t.Fatalf("history while full: %d ops, %v; want the 2 stored before", len(page.Ops), err)
	}
	if err := e.Mark(ctx, alice.Actor, []engine.Marker{{Conv: conv, Delivered: 2, Read: 2}}); err != nil {
		t.Fatalf("a marker while full: %v", err)
	}
	spare := enginetest.Login(t, e, "alice")
	if err := e.RevokeDevice(ctx, alice.Actor, spare.Actor.Device); err != nil {
		t.Fatalf("revoking a device while full: %v", err)
	}

	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 10 << 30})
	if err := send("freed, not yet seen"); !errors.Is(err, engine.ErrDiskFull) {
		t.Fatalf("within a second of the last look: %v, want still refused", err)
	}
	fake.Advance(time.Second)
	alice.Send(conv, "after")
	if e.DiskLow() {
		t.Fatal("still low after space was freed")
	}

	// A disk of 1 GiB keeps 51 MiB free, not 100.
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 60 << 20, TotalBytes: 1 << 30})
	fake.Advance(time.Second)
	if e.DiskLow() {
		t.Fatal("60 MiB free of a 1 GiB disk counts as low: a small volume would refuse everything")
	}
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 50 << 20, TotalBytes: 1 << 30})
	fake.Advance(time.Second)
	if !e.DiskLow() {
		t.Fatal("50 MiB free of a 1 GiB disk, under its twentieth, does not count as low")
	}
	enginetest.MustCheck(t, e)
}
