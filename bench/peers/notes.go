package peers

import (
	"fmt"
	"os/exec"
	"strings"
)

// NATSNotes describe the NATS JetStream setup for the report.
func NATSNotes() []string {
	return []string{
		fmt.Sprintf("nats-jetstream: nats-server %s as a child process (its CPU and RSS alone), file storage with sync_interval: always "+
			"(the file store syncs its message block on every write), one stream with a subject per conversation; client nats.go. "+
			"A push of n messages is n async publishes, done on the n-th PubAck (no atomic batch publish). Live delivery is a core "+
			"subscription per conversation to the stream's republished subject, so a message reaches clients once stored. A stream "+
			"per conversation, or a relaxed sync_interval, would change the ingest figures; neither is measured.", NATSServerVersion),
		"nats-jetstream catch-up: reconnect, then one ephemeral consumer filtered on the device's conversations starting after the " +
			"lowest stream sequence it holds, pulled until drained. Messages of conversations held further are sent again and skipped: " +
			"they count in wire bytes, not in ops. Round trips are the consumer creation and the pulls; the connection handshake is not " +
			"counted. Every message carries its subject and a $JS.ACK reply subject with its metadata on the wire.",
	}
}

// CentrifugoNotes describe the Centrifugo setup for the report, including
// its default recovery limit: the memory engine's rows when memory is set,
// and the Redis engine's (centrifugo+redis) when redis is set. Without
// redis, they say why the Redis engine was not measured.
func CentrifugoNotes(memory, redis bool) []string {
	var notes []string
	if memory {
		notes = append(notes, fmt.Sprintf("centrifugo: Centrifugo %s as a child process (its CPU and RSS alone), memory engine: a publish is acknowledged "+
			"from memory, nothing is durable, so there is no storage row and its ingest is not comparable with a synced commit. "+
			"History and recovery forced on every channel (history_size %d, history_ttl 24h); JWT (HMAC) connection tokens; clients "+
			"centrifuge-go over WebSocket with the Protobuf protocol, one subscription per conversation. Pushes go through the server "+
			"HTTP API (/api/publish, /api/batch for a batch): one HTTP request with JSON and base64 per push, whose client-side "+
			"cost shares the machine's cores with the server.", CentrifugoVersion, centrifugoHistorySize))
	}
	if redis {
		notes = append(notes, fmt.Sprintf("centrifugo+redis: the durable Centrifugo. Centrifugo %s with the Redis engine (engine.type redis, "+
			"engine.redis.address a redis-server of its own; history in Redis streams, Centrifugo's default), otherwise set up as "+
			"centrifugo: history and recovery forced on every channel (history_size %d, history_ttl 24h), JWT (HMAC) tokens, "+
			"centrifuge-go clients over WebSocket with Protobuf, pushes through the server HTTP API, limits raised. %s (found on PATH, which make bench-peers installs from Debian when missing) runs as a "+
			"second child process on a fresh folder for each workload, without a configuration file: its built-in defaults plus "+
			"%s. With appendfsync always, Redis writes and fsyncs the append-only file before it replies, so a publish is "+
			"acknowledged once on disk. CPU and RSS are the sums of centrifugo's and redis-server's; peak RSS is the sum of each "+
			"process's own peak. Storage: the size of Redis's append-only files in use (manifest, base and incremental file) "+
			"after a BGREWRITEAOF, whose base file holds the whole data set in RDB format (aof-use-rdb-preamble yes, LZF "+
			"compression of long strings, so it can be smaller than the payload): each publication is a stream entry with its "+
			"payload and offset, plus each channel's history meta key. The append-only file as written before the rewrite "+
			"(each write as a command) is larger; it is not what the storage row shows.", CentrifugoVersion, centrifugoHistorySize, redisServerVersion(), strings.Join(quoteEmpty(redisArgs), " ")))
	} else if _, err := exec.LookPath(RedisServerBinary); err != nil {
		notes = append(notes, "centrifugo with the Redis engine (appendfsync always): not measured: no redis-server on this machine.")
	} else {
		notes = append(notes, "centrifugo with the Redis engine (appendfsync always): not measured in this run (centrifugo+redis not in --systems).")
	}
	notes = append(notes,
		fmt.Sprintf("centrifugo recovery limit: by default client.recovery_max_publication_limit and client.history_max_publication_limit "+
			"are %d. A channel that missed more than that is not recovered at all (recovered: false, no publications) and the client "+
			"must page through history, %d per call: rows \"centrifugo (default limits)\" measure that, what users get by default. "+
			"Rows \"centrifugo\" and \"centrifugo+redis\" raise both limits to %d for a like-for-like comparison.",
			CentrifugoDefaultLimit, CentrifugoDefaultLimit, centrifugoRaisedLimit),
		"centrifugo catch-up round trips: the connect command, one subscribe with recovery per channel (sent together on one "+
			"connection, so they cost about one network round trip in latency but are counted one each) and any history pages.")
	return notes
}

// quoteEmpty shows empty arguments as "".
func quoteEmpty(args []string) []string {
	out := make([]string, len(args))
	for k, a := range args {
		if a == "" {
			a = `""`
		}
		out[k] = a
	}
	return out
}

// CommonNotes describe what the peers' figures share.
func CommonNotes() []string {
	return []string{
		"Peers' catch-up time and wire bytes include opening a new connection (TCP, and the NATS or WebSocket handshake); Ferry's " +
			"catch-up opens a new stream, on a connection its HTTP client may reuse.",
		"A peer client that connects before anything was published subscribes from the current position without a catch-up; " +
			"the workloads only connect clients before they send.",
		"Ferry's clients acknowledge what they receive with delivered markers, as the Go SDK does: durable writes on the server, " +
			"gathered for 250 ms in conversations of up to 32 members, where they feed read receipts to the other members, and for 5 s " +
			"in larger ones, where they only set where the device's next session resumes. The peers' clients acknowledge nothing " +
			"(NATS core subscriptions, Centrifugo publications). Ferry's fan-out and ingest figures include that work.",
	}
}
