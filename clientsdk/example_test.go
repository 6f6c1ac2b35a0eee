package clientsdk_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/server"
)

// exampleServer is the URL of a Ferry server for the examples, started by
// TestMain on an in-memory store.
var exampleServer string

func TestMain(m *testing.M) {
	eng, err := engine.Open("db", engine.Options{FS: vfs.NewMem(), AllowRegistration: true,
		Logger: slog.New(slog.DiscardHandler), Password: engine.PasswordParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		log.Fatal(err)
	}
	srv, err := server.New(eng, server.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	hs := server.NewHTTPServer(ln.Addr().String(), srv.Handler(), nil)
	go func() { _ = hs.Serve(ln) }()
	exampleServer = "http://" + ln.Addr().String()
	code := m.Run()
	srv.GoAway()
	_ = hs.Close()
	srv.Wait()
	_ = eng.Close()
	os.Exit(code)
}

// A device sends while offline; the message waits in the outbox, then goes
// out and gets its seq.
func Example() {
	ctx := context.Background()
	alice, err := clientsdk.OpenMemory(clientsdk.WithServer(exampleServer))
	if err != nil {
		log.Fatal(err)
	}
	defer alice.Close()
	if err := alice.Register(ctx, "example-alice", "correct horse", "laptop"); err != nil {
		log.Fatal(err)
	}
	conv, err := alice.CreateConversation(ctx, "plans")
	if err != nil {
		log.Fatal(err)
	}
	if _, err := alice.SendText(ctx, conv, "hello"); err != nil {
		log.Fatal(err)
	}
	page, _ := alice.Messages(conv, clientsdk.PageOptions{})
	fmt.Println(page.Messages[0].Text(), page.Messages[0].Status)

	if err := alice.SyncOnce(ctx); err != nil { // or Start, to stay in sync
		log.Fatal(err)
	}
	page, _ = alice.Messages(conv, clientsdk.PageOptions{})
	fmt.Println(page.Messages[0].Text(), page.Messages[0].Status, "with seq", page.Messages[0].Seq)
	// Output:
	// hello pending
	// hello sent with seq 2
}

// Subscribe delivers typed events as the device syncs in the background.
func ExampleDevice_Subscribe() {
	ctx := context.Background()
	open := func(user string) *clientsdk.Device {
		d, err := clientsdk.OpenMemory(clientsdk.WithServer(exampleServer))
		if err != nil {
			log.Fatal(err)
		}
		if err := d.Register(ctx, user, "correct horse", "phone"); err != nil {
			log.Fatal(err)
		}
		return d
	}
	alice, bob := open("example-carol"), open("example-dave")
	defer alice.Close()
	defer bob.Close()

	events := bob.Subscribe(64)
	if err := bob.Start(); err != nil {
		log.Fatal(err)
	}
	dave, _ := alice.LookupUser(ctx, "example-dave")
	conv, _ := alice.CreateConversation(ctx, "lunch", dave.ID)
	alice.SendText(ctx, conv, "pizza?")
	if err := alice.SyncOnce(ctx); err != nil {
		log.Fatal(err)
	}

	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-events.C():
			if e, ok := ev.(clientsdk.MessagesChanged); ok {
				page, _ := bob.Messages(e.Conv, clientsdk.PageOptions{Limit: 1})
				if len(page.Messages) > 0 {
					c, _ := bob.Conversation(e.Conv)
					fmt.Printf("%s: %s (%d unread)\n", c.Title, page.Messages[0].Text(), c.Unread)
					return
				}
			}
		case <-timeout:
			fmt.Println("no message")
			return
		}
	}
	// Output:
	// lunch: pizza? (1 unread)
}
