package clientsdk

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
)

// Clock tells the time and makes timers; tests pass a fake one to drive
// reconnect backoff and heartbeats without sleeping.
type Clock = clock.Clock

// Timer is a timer made by a Clock.
type Timer = clock.Timer

// Option configures a Device.
type Option interface{ apply(*options) }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	server     string
	httpClient *http.Client
	logger     *slog.Logger
	clock      Clock
	entropy    io.Reader
	pageSize   int
	minBackoff time.Duration
	maxBackoff time.Duration
	heartbeat  time.Duration
	ackDelay   time.Duration
	// resumeAckDelay is ackDelay for delivered markers nobody else sees.
	resumeAckDelay time.Duration
	client         string
	compress       bool
}

func defaultOptions() options {
	return options{
		logger:     slog.New(slog.DiscardHandler),
		clock:      clock.Real{},
		pageSize:   50,
		minBackoff: 250 * time.Millisecond,
		maxBackoff: 30 * time.Second,
		heartbeat:  20 * time.Second,
		ackDelay:   250 * time.Millisecond,
		// Five seconds of ops at most come again after a dropped
		// session, as a Kafka consumer's offsets are committed.
		resumeAckDelay: 5 * time.Second,
		client:         "ferry-go-sdk/1",
		compress:       true,
	}
}

// check refuses options that would spin (a heartbeat or a reconnect loop
// without pause) or make no sense.
func (o *options) check() error {
	var errs []error
	if o.heartbeat < minHeartbeat {
		errs = append(errs, fmt.Errorf("WithHeartbeat(%v): it must be at least %v", o.heartbeat, minHeartbeat))
	}
	if o.minBackoff <= 0 || o.maxBackoff < o.minBackoff {
		errs = append(errs, fmt.Errorf("WithBackoff(%v, %v): min must be positive and max at least min", o.minBackoff, o.maxBackoff))
	}
	if o.server != "" && !strings.HasPrefix(o.server, "http://") && !strings.HasPrefix(o.server, "https://") {
		errs = append(errs, fmt.Errorf("WithServer(%q): the URL must start with http:// or https://", o.server))
	}
	if o.pageSize < 0 {
		errs = append(errs, fmt.Errorf("WithPageSize(%d): it must not be negative", o.pageSize))
	}
	if o.clock == nil || o.logger == nil {
		errs = append(errs, errors.New("WithClock and WithLogger need a clock and a logger, not nil"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ferry: options: %w", err)
	}
	return nil
}

// minHeartbeat is the shortest heartbeat: the server's shortest interval.
const minHeartbeat = 100 * time.Millisecond

// WithServer sets the server's base URL, such as "http://127.0.0.1:8080".
// Register and Login remember it in the profile; it is needed only the first
// time or to move a profile to another server.
func WithServer(url string) Option { return optionFunc(func(o *options) { o.server = url }) }

// WithHTTPClient sets the HTTP client. The default speaks HTTP/2 without TLS
// (h2c) to http:// URLs and HTTP/2 over TLS to https:// URLs.
func WithHTTPClient(c *http.Client) Option { return optionFunc(func(o *options) { o.httpClient = c }) }

// WithLogger sets the logger. The default discards logs.
func WithLogger(l *slog.Logger) Option { return optionFunc(func(o *options) { o.logger = l }) }

// WithClock sets the clock used for backoff, heartbeats and op id times.
// The default is the system clock.
func WithClock(c Clock) Option { return optionFunc(func(o *options) { o.clock = c }) }

// WithEntropy sets the randomness of op and conversation ids. The default
// is crypto/rand.
func WithEntropy(r io.Reader) Option { return optionFunc(func(o *options) { o.entropy = r }) }

// WithPageSize sets how many of the newest ops of each changed conversation
// a catch-up fetches before backfilling older ones. Default 50; 0 catches up
// strictly in seq order.
func WithPageSize(n int) Option { return optionFunc(func(o *options) { o.pageSize = n }) }

// WithBackoff sets the reconnect backoff: it starts at min and doubles up
// to max, with jitter. Defaults 250ms and 30s; Open refuses a min that is
// not positive or a max below it.
func WithBackoff(min, max time.Duration) Option {
	return optionFunc(func(o *options) { o.minBackoff, o.maxBackoff = min, max })
}

// WithHeartbeat sets how often the device sends a heartbeat on an idle
// session. Default 20s; it must stay under the server's heartbeat interval
// (ferryd --heartbeat, 30s by default), and Open refuses less than 100ms.
func WithHeartbeat(d time.Duration) Option { return optionFunc(func(o *options) { o.heartbeat = d }) }

// WithAckDelay sets how long the markers a session has to send (what the
// device now holds, what the user read) gather before they go out in one
// ack. Under load a device then acks many rounds at once, which spares the
// server most of its per-ack work: in a group, every member's device acks
// each message it receives. Receipts wait on the server as long (250ms by
// default), so a device that acked sooner would show its receipt little
// sooner; a read reaches the user's other devices this much later. Default
// 250ms; 0 sends every ack at once.
func WithAckDelay(d time.Duration) Option {
	return optionFunc(func(o *options) { o.ackDelay = max(d, 0) })
}

// WithResumeAckDelay sets how long the delivered markers that nobody else
// sees gather: those of conversations without receipts (larger than the
// server's receipt limit, 32 members by default), where the delivered
// marker only tells the server where the device's next session resumes. A
// group of a thousand then costs the server at most a thousand acks per
// period, however many messages it gets, and a session that drops gets at
// most this much of the ops it held again, which it already has and
// skips. Read markers and markers that other members see still go after
// WithAckDelay. Default 5s: in the bench's fan-out to a thousand
// devices at a message a second, 5s took a quarter off the server's CPU and
// a fifth off the devices' against 1s. It is never shorter than the ack
// delay.
func WithResumeAckDelay(d time.Duration) Option {
	return optionFunc(func(o *options) { o.resumeAckDelay = max(d, 0) })
}

// WithoutCompression sends and accepts uncompressed messages, for
// debugging and for measuring what compression saves. By default messages
// are compressed with zstd.
func WithoutCompression() Option { return optionFunc(func(o *options) { o.compress = false }) }
