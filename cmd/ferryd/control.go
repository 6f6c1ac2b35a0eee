package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/server"
)

// The control socket. A serving ferryd listens on a Unix socket in its
// store's folder, and the tools whose work a live store allows
// (liveTools) have the server running on the store do it, so that an
// operator backs up, checks, compacts and manages accounts without
// stopping it. Whoever may connect
// may open the store's files anyway: the socket is its user's alone (mode
// 0600). The tools that rewrite the store from its logs, or act on its
// next opening (rebuild, new-epoch), still need it stopped.
//
// The calls are HTTP: POST /TOOL with the tool's request in JSON, answered
// 200 with its result in JSON, or another status with the error's text.

// controlSocket is the socket's name in the store's folder.
const controlSocket = "ferryd.sock"

// maxSocketPath is one more than the longest socket path every Unix
// takes (macOS and the BSDs: 103 bytes and a NUL; Linux: 107).
const maxSocketPath = 104

// storeTool is a tool's work on a store, the same whoever does it: the
// server running on the store, or the tool on a stopped one.
type storeTool[Req, Resp any] func(ctx context.Context, st store, req Req) (Resp, error)

// store is the store a tool works on, open.
type store struct {
	eng *engine.Engine
	dir string // its folder, as --data gave it
}

// liveTools names the tools a server running on the store does: those of
// controlTools.
const liveTools = "check, backup, compact, add-user, set-password, revoke-devices, set-quota and show-user"

// controlTools are the tools a serving ferryd does for its socket's
// clients, by name.
var controlTools = map[string]func(ctx context.Context, st store, req []byte) (any, error){
	"check":          controlTool(checkStore),
	"backup":         controlTool(backupStore),
	"compact":        controlTool(compactStore),
	"add-user":       controlTool(addUserTo),
	"set-password":   controlTool(setPasswordIn),
	"revoke-devices": controlTool(revokeDevicesIn),
	"set-quota":      controlTool(setQuotaOf),
	"show-user":      controlTool(showUserIn),
}

func controlTool[Req, Resp any](f storeTool[Req, Resp]) func(ctx context.Context, st store, body []byte) (any, error) {
	return func(ctx context.Context, st store, body []byte) (any, error) {
		var req Req
		if err := json.Unmarshal(body, &req); err != nil {
			return nil, badControlCall{fmt.Errorf("the request does not decode: %w", err)}
		}
		return f(ctx, st, req)
	}
}

// stoppable are the tools whose work stops when the tool is interrupted
// or the server stops: the others' runs whole once begun (a backup half
// written would be left to remove, and the rest are single writes).
var stoppable = map[string]bool{"compact": true}

// badControlCall is a call the server refuses as malformed (400).
type badControlCall struct{ error }

// testControlCall, when set, runs as a control call starts its work,
// under the tools' lock, given the work's context: a test holds a call
// there. testControlQueued runs as a call, counted under way, is about
// to wait its turn.
var (
	testControlCall   func(tool string, work context.Context)
	testControlQueued func(tool string)
)

// controlGrace is how long a stopping server gives the answer of the
// control call it finished last, and any call still sending its request,
// before it closes their connections.
var controlGrace = 5 * time.Second

// testControlBound, when set, is told where the socket was bound, before
// it is moved to its name.
var testControlBound func(path string)

// control serves the control socket.
type control struct {
	st     store
	log    *slog.Logger
	hs     *http.Server
	path   string       // the socket's
	active atomic.Int32 // calls under way
	once   sync.Once

	mu     sync.Mutex // held by the call doing a tool's work: one at a time, as a backup and a check each read the whole store
	closed bool       // the store is closing: no more work

	srv *server.Server // counts the calls (ControlCall), for its metrics

	stopping context.Context // ends as the server stops: the stoppable tools' work ends
	stop     context.CancelFunc
}

// listenControl serves the control socket of the store in dir, which eng
// has open. A socket file left by a server that stopped without removing
// it is replaced: eng holds the store's lock, so no other server is
// listening on it.
//
// The socket is bound in a folder of its own, its user's alone, made its
// user's alone too, then moved to its name: bound where it is named, it
// would take connections under the process's umask until its mode
// changed, and a connection made meanwhile is served.
func listenControl(dir string, eng *engine.Engine, srv *server.Server, log *slog.Logger) (*control, error) {
	path := filepath.Join(dir, controlSocket)
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove the %s left by an earlier server: %w", path, err)
	}
	// A fixed name, shorter than the socket's, so that a store whose
	// socket's name fits gets one. Made anew: eng's lock says no other
	// server is binding in it. What a server killed while it bound left
	// is removed, and nothing else: a .c of another's (a --data that is
	// not only the store's) stays, and the server goes without a socket.
	private := filepath.Join(dir, ".c")
	bound := filepath.Join(private, "s")
	if err := os.Remove(bound); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove the %s left by an earlier server: %w", bound, err)
	}
	if err := os.Remove(private); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s, where ferryd binds its socket first, holds something else: %w", private, err)
	}
	if err := os.Mkdir(private, 0o700); err != nil {
		return nil, err
	}
	defer os.Remove(private) // empty once the socket moved, or failed to
	ln, err := net.Listen("unix", bound)
	if err != nil && len(bound) >= maxSocketPath {
		return nil, fmt.Errorf("%w: its path is %d bytes, more than a Unix socket's may be (%d on Linux, %d on macOS and the BSDs); serve from a shorter --data path", err, len(bound), maxSocketPath+3, maxSocketPath-1)
	}
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // it is removed by its name (close)
	if testControlBound != nil {
		testControlBound(bound)
	}
	err = os.Chmod(bound, 0o600)
	if err == nil {
		err = os.Rename(bound, path)
	}
	if err != nil {
		ln.Close()
		_ = os.Remove(bound)
		return nil, fmt.Errorf("make %s its user's alone: %w", path, err)
	}
	c := &control{st: store{eng: eng, dir: dir}, srv: srv, log: log, path: path}
	c.stopping, c.stop = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{tool}", c.serve)
	// A request comes whole at once from the tools: one that stalls is
	// not let hold a stop up.
	c.hs = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second}
	go func() { _ = c.hs.Serve(ln) }()
	return c, nil
}

func (c *control) serve(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("tool")
	tool, ok := controlTools[name]
	if !ok {
		http.Error(w, fmt.Sprintf("ferryd has no tool %q that a running server does", name), http.StatusNotFound)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	c.active.Add(1)
	defer c.active.Add(-1)
	if testControlQueued != nil {
		testControlQueued(name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.stopping.Err() != nil { // a call that waited its turn while the stop began
		http.Error(w, "the server is stopping: run the tool again once it has stopped, on its store, or on the next server's", http.StatusServiceUnavailable)
		return
	}
	ctx := context.WithoutCancel(r.Context())
	if stoppable[name] {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(r.Context()) // the tool's connection closes when it is interrupted
		defer cancel()
		defer context.AfterFunc(c.stopping, cancel)()
	}
	if testControlCall != nil {
		testControlCall(name, ctx)
	}
	start := time.Now()
	resp, err := tool(ctx, c.st, body)
	c.count(name, resp, err)
	if err != nil {
		code := http.StatusUnprocessableEntity
		if errors.As(err, new(badControlCall)) {
			code = http.StatusBadRequest
		}
		c.log.Warn("control: "+name+" failed", "err", err, "took", time.Since(start))
		http.Error(w, err.Error(), code)
		return
	}
	c.log.Info("control: "+name+" done", "took", time.Since(start))
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// count counts a call of tool that answered resp, or err, in the
// server's metrics.
func (c *control) count(tool string, resp any, err error) {
	result := "ok"
	if rep, ok := resp.(engine.CheckReport); ok && len(rep.Problems) > 0 {
		result = "problems" // a check that found the store inconsistent
	}
	if err != nil {
		result = "error"
	}
	c.srv.ControlCall(tool, result, time.Now())
}

// close stops taking calls, once the one doing its work, if any, is done,
// however long that takes: the store must not close under a backup or a
// check, which cannot be cut short. A call still sending its request, or
// waiting its turn, gets no work done. Closing twice does nothing.
func (c *control) close() {
	if c == nil {
		return
	}
	c.once.Do(func() {
		c.stop() // a compaction ends
		if n := c.active.Load(); n > 0 {
			c.log.Info("stopping: waiting for the control call under way (ferryd check, backup, ...) to finish", "calls", n)
		}
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		// The last call's answer, written, is let reach its tool.
		ctx, cancel := context.WithTimeout(context.Background(), controlGrace)
		defer cancel()
		if err := c.hs.Shutdown(ctx); err != nil {
			_ = c.hs.Close()
		}
		_ = os.Remove(c.path)
	})
}

// errNoServer says no server is running on the store: its control socket
// is missing, or nothing listens on it.
var errNoServer = errors.New("no server is running on the store")

// askServer has the server running on the store in dir do tool's work.
// It returns errNoServer when none listens there.
func askServer[Req, Resp any](ctx context.Context, dir, tool string, req Req) (Resp, error) {
	var resp Resp
	path := filepath.Join(dir, controlSocket)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return resp, errNoServer
	}
	dial := path
	if len(dial) >= maxSocketPath {
		// Too long for a socket's address: by a path relative to the
		// working directory, when that is short enough.
		if wd, err := os.Getwd(); err == nil {
			if rel, err := filepath.Rel(wd, absPath(path)); err == nil && len(rel) < len(dial) {
				dial = rel
			}
		}
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", dial)
		},
	}}
	defer client.CloseIdleConnections()
	body, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://ferryd/"+tool, bytes.NewReader(body))
	if err != nil {
		return resp, err
	}
	hresp, err := client.Do(hreq)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist):
		return resp, errNoServer // a socket a server that stopped left behind
	case errors.Is(err, fs.ErrPermission):
		// Another user's: a server of theirs, or one that stopped. The
		// store, whose lock says which, is theirs too: opening it says so.
		return resp, errNoServer
	case ctx.Err() != nil && stoppable[tool]:
		return resp, fmt.Errorf("%s: interrupted; the server stops it: %w", tool, ctx.Err())
	case ctx.Err() != nil:
		return resp, fmt.Errorf("%s: interrupted; the server goes on with it, and logs its end: %w", tool, ctx.Err())
	case err != nil && len(dial) >= maxSocketPath:
		return resp, fmt.Errorf("%s: reach the server running on the store through %s: %w: its path is %d bytes, more than a Unix socket's may be: run the tool nearer the store (cd %s; ferryd %s --data . ...)", tool, path, err, len(dial), dir, tool)
	case err != nil:
		return resp, fmt.Errorf("%s: reach the server running on the store through %s: %w", tool, path, err)
	}
	defer hresp.Body.Close()
	if hresp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(hresp.Body, 64<<10))
		err := fmt.Errorf("the server running on the store: %s", bytes.TrimSpace(msg))
		if hresp.StatusCode == http.StatusBadRequest { // what the tool's own checks would refuse
			err = usageErr(err)
		}
		return resp, err
	}
	if err := json.NewDecoder(hresp.Body).Decode(&resp); err != nil {
		return resp, fmt.Errorf("%s: the server's answer does not decode: %w", tool, err)
	}
	return resp, nil
}

// onStore does a tool's work: by the server running on the store when
// there is one, else on the stopped server's store. served says which.
func onStore[Req, Resp any](ctx context.Context, c *config, log *slog.Logger, tool string, req Req, f storeTool[Req, Resp]) (resp Resp, served bool, err error) {
	resp, err = askServer[Req, Resp](ctx, c.data, tool, req)
	if !errors.Is(err, errNoServer) {
		for _, f := range []string{"store-compression", "cache-mib", "memtable-mib"} {
			if c.given[f] {
				log.Warn("--" + f + " applies to a stopped server's store only: the server running on the store keeps its own")
			}
		}
		return resp, true, err
	}
	eng, err := openStopped(c, log)
	if err != nil {
		return resp, false, err
	}
	defer func() { err = errors.Join(err, eng.Close()) }()
	resp, err = f(ctx, store{eng: eng, dir: c.data}, req)
	return resp, false, err
}
