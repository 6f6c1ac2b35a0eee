package peers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// RedisServerBinary is the name the harness looks up on PATH for the
// Redis engine. The harness does not install Redis (make bench-peers
// does, from Debian, when it is missing): without it on PATH,
// centrifugo+redis is not measured.
const RedisServerBinary = "redis-server"

// LookRedisServer returns the path of redis-server on PATH, or an error
// saying it is not installed.
func LookRedisServer() (string, error) {
	path, err := exec.LookPath(RedisServerBinary)
	if err != nil {
		return "", fmt.Errorf("no %s on PATH (Debian: apt-get install redis-server): %w", RedisServerBinary, err)
	}
	return path, nil
}

// redisServerVersion is redis-server's version as its --version tells it,
// "redis-server v7.0.15" say, or just "redis-server" when it cannot tell.
func redisServerVersion() string {
	bin, err := LookRedisServer()
	if err != nil {
		return RedisServerBinary
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return RedisServerBinary
	}
	// Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 ...
	for _, f := range strings.Fields(string(out)) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return RedisServerBinary + " v" + v
		}
	}
	return RedisServerBinary
}

// redisArgs are redis-server's settings besides port, bind and dir: an
// append-only file synced before every write is acknowledged (since Redis
// 7 the reply waits for the fsync), no RDB snapshots, in the foreground.
// The rest are redis-server's built-in defaults (no configuration file), so
// aof-use-rdb-preamble is yes: a rewritten AOF's base file is in RDB
// format.
var redisArgs = []string{"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"}

// redisServer is a redis-server child process with its data in its own
// folder.
type redisServer struct {
	srv  *server
	addr string
	dir  string
}

// startRedis starts bin on a free loopback port with its data in dir,
// which it creates, and waits until it accepts connections (at most 30
// seconds).
func startRedis(ctx context.Context, bin, dir string) (*redisServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir}, redisArgs...)
	srv, err := startServer(ctx, "redis-server", bin, args, "Ready to accept connections", "", 30*time.Second)
	if err != nil {
		return nil, err
	}
	return &redisServer{srv: srv, addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir}, nil
}

// stop stops the server.
func (r *redisServer) stop() error { return r.srv.stop() }

// do sends one command on a fresh connection and returns its reply, which
// must be a simple string, an integer (as text) or a bulk string; an error
// reply is returned as an error. The exchange is bounded by 30 seconds.
func (r *redisServer) do(ctx context.Context, args ...string) (string, error) {
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", r.addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return "", err
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("redis %s: %w", args[0], err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("redis %s: empty reply", args[0])
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis %s: %s", args[0], line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("redis %s: unexpected reply %q", args[0], line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", fmt.Errorf("redis %s: %w", args[0], err)
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redis %s: unexpected reply %q", args[0], line)
}

// info returns the fields of an INFO section.
func (r *redisServer) info(ctx context.Context, section string) (map[string]string, error) {
	s, err := r.do(ctx, "INFO", section)
	if err != nil {
		return nil, err
	}
	fields := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	return fields, nil
}

// rewriteAOF runs BGREWRITEAOF and waits, at most a minute, until the
// rewrite is done and installed. Redis says nothing when it is done, so
// this polls INFO persistence every 20ms.
func (r *redisServer) rewriteAOF(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	started := false
	for {
		if !started {
			_, err := r.do(ctx, "BGREWRITEAOF")
			switch {
			case err == nil:
				started = true
			case !strings.Contains(err.Error(), "already in progress"):
				return err
			}
			// Otherwise an automatic rewrite is running: wait for it
			// and start ours after.
		}
		info, err := r.info(ctx, "persistence")
		if err != nil {
			return err
		}
		if info["aof_rewrite_in_progress"] == "0" && info["aof_rewrite_scheduled"] == "0" {
			if started {
				if st := info["aof_last_bgrewrite_status"]; st != "ok" {
					return fmt.Errorf("redis BGREWRITEAOF failed (status %q)\n%s", st, r.srv.output())
				}
				return nil
			}
			continue // the other rewrite ended: start ours now
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis BGREWRITEAOF not done within a minute\n%s", r.srv.output())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// aofBytes is the size of the append-only files in use: the manifest
// (appendonlydir/appendonly.aof.manifest, Redis 7's multi-part AOF) and the
// base and incremental files it lists. Files of an earlier generation,
// which Redis deletes in the background after a rewrite, are not counted.
func (r *redisServer) aofBytes() (int64, error) {
	dir := filepath.Join(r.dir, "appendonlydir")
	manifest := filepath.Join(dir, "appendonly.aof.manifest")
	b, err := os.ReadFile(manifest)
	if err != nil {
		return 0, err
	}
	n := int64(len(b))
	for _, line := range strings.Split(string(b), "\n") {
		// file <name> seq <n> type <b|i|h>
		f := strings.Fields(line)
		if len(f) < 6 || f[0] != "file" || f[4] != "type" || f[5] == "h" {
			continue
		}
		info, err := os.Stat(filepath.Join(dir, f[1]))
		if err != nil {
			return 0, err
		}
		n += info.Size()
	}
	if n == int64(len(b)) {
		return 0, errors.New("redis AOF manifest lists no base or incremental file")
	}
	return n, nil
}
