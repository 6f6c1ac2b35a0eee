package bench

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/opid"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// PebbleResult is raw Pebble's synced batch-commit throughput: the ceiling
// of durable ingest on this disk.
type PebbleResult struct {
	Committers int     `json:"committers"`
	Batch      int     `json:"batch,omitempty"` // records per commit; 0 (reports before it) is 1
	OpsPerSec  float64 `json:"ops_per_sec"`     // records per second
}

// records is how many records each commit held.
func (x PebbleResult) records() int { return max(x.Batch, 1) }

// PebbleCommits measures synced commits of batch op-sized records each, by
// concurrent committers, on a fresh store in dir (64 MiB memtable, like the
// engine's): records a second.
func PebbleCommits(dir string, committers, batch int, d time.Duration) (PebbleResult, error) {
	batch = max(batch, 1)
	db, err := pebble.Open(dir, &pebble.Options{MemTableSize: 64 << 20, Logger: quietLogger{}})
	if err != nil {
		return PebbleResult{}, err
	}
	defer db.Close()
	var n atomic.Int64
	var failed firstError
	value := make([]byte, 150+60) // a typical payload plus the op record's fields
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range committers {
		wg.Go(func() {
			key := make([]byte, 25)
			binary.BigEndian.PutUint64(key[1:], uint64(w))
			for i := uint64(0); time.Now().Before(deadline) && failed.Load() == nil; {
				b := db.NewBatch()
				for range batch {
					binary.BigEndian.PutUint64(key[17:], i)
					i++
					_ = b.Set(key, value, nil)
				}
				if err := b.Commit(pebble.Sync); err != nil {
					failed.Store(err)
					return
				}
				n.Add(int64(batch))
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil { // a lower rate would pass for the limit
		return PebbleResult{}, fmt.Errorf("pebble commits: %w", err)
	}
	return PebbleResult{Committers: committers, Batch: batch, OpsPerSec: float64(n.Load()) / time.Since(start).Seconds()}, nil
}

// PebbleLatencyResult is raw Pebble's synced-commit latency at a fixed
// rate: what a durable ack at that rate costs the store and the disk alone,
// under an open-loop ingest row's ack latency. It is measured on a new
// store, which a row on a store in use shares (latencyShapes): that row's
// flushes and compactions are not in it.
type PebbleLatencyResult struct {
	Committers int     `json:"committers"`
	Batch      int     `json:"batch"` // records per commit
	Rate       float64 `json:"rate"`  // records per second
	Latency    Summary `json:"latency"`
}

// PebbleLatency commits batch op-sized records at a time, synced, on a
// fresh store in dir, at rate records per second, on the schedule of an
// open-loop ingest row with as many writers as committers: each commit
// starts at its time whether or not the ones before it are done (as a
// writer's push goes without waiting for the last one's ack), and its
// latency counts from that time.
func PebbleLatency(dir string, committers, batch int, rate float64, d time.Duration) (PebbleLatencyResult, error) {
	res := PebbleLatencyResult{Committers: committers, Batch: batch, Rate: rate}
	if committers < 1 || batch < 1 || rate <= 0 {
		return res, fmt.Errorf("pebble latency: %d committers of %d records at %.0f/s", committers, batch, rate)
	}
	db, err := pebble.Open(dir, &pebble.Options{MemTableSize: 64 << 20, Logger: quietLogger{}})
	if err != nil {
		return res, err
	}
	defer db.Close()
	value := make([]byte, 150+60)
	res.Latency, err = openLoop(committers, batch, rate, d, func(w int, i uint64) error {
		b := db.NewBatch()
		key := make([]byte, 25)
		binary.BigEndian.PutUint64(key[1:], uint64(w))
		for j := range uint64(batch) {
			binary.BigEndian.PutUint64(key[17:], i*uint64(batch)+j)
			_ = b.Set(key, value, nil)
		}
		return b.Commit(pebble.Sync)
	})
	return res, err
}

// openLoop calls commit(w, i) for the i-th commit of committer w on the
// schedule PebbleLatency describes, each in its own goroutine, and
// returns the latencies from the scheduled times.
func openLoop(committers, batch int, rate float64, d time.Duration, commit func(w int, i uint64) error) (Summary, error) {
	var lat Latencies
	var mu sync.Mutex
	var failed error // the first commit's to fail; no more start after it
	interval := time.Duration(float64(time.Second) * float64(committers*batch) / rate)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range committers {
		wg.Go(func() {
			i := uint64(0)
			for at := start.Add(time.Duration(w) * interval / time.Duration(committers)); at.Before(deadline); at = at.Add(interval) {
				time.Sleep(time.Until(at)) // pacing the load, open loop
				mu.Lock()
				stop := failed != nil
				mu.Unlock()
				if stop {
					return
				}
				n := i
				wg.Go(func() {
					if err := commit(w, n); err != nil {
						mu.Lock()
						if failed == nil {
							failed = err
						}
						mu.Unlock()
						return
					}
					lat.Add(time.Since(at))
				})
				i++
			}
		})
	}
	wg.Wait()
	if failed != nil {
		return Summary{}, failed
	}
	return lat.Summary(), nil
}

// FsyncLatency is the median latency of one synced commit on this disk.
func FsyncLatency(dir string, samples int) (time.Duration, error) {
	db, err := pebble.Open(dir, &pebble.Options{Logger: quietLogger{}})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var lat Latencies
	for i := range samples {
		start := time.Now()
		if err := db.Set(binary.BigEndian.AppendUint64(nil, uint64(i)), []byte("x"), pebble.Sync); err != nil {
			return 0, err
		}
		lat.Add(time.Since(start))
	}
	return lat.Summary().P50, nil
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...any)           {}
func (quietLogger) Errorf(string, ...any)          {}
func (quietLogger) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }

// ZstdResult is zstd's speed and ratio on batches of ops as sent.
type ZstdResult struct {
	OpsPerBatch int     `json:"ops_per_batch"`
	Ratio       float64 `json:"ratio"` // compressed / raw
	MBPerSec    float64 `json:"mb_per_sec"`
	// TextRatio is zstd's ratio on the batches' texts alone, one after
	// another: the floor that the payload itself sets on what a batch's
	// wire bytes over its payload can be. Zero in reports before it.
	TextRatio float64 `json:"text_ratio,omitempty"`
}

// Zstd compresses wire batches of opsPerBatch corpus messages (Ops messages
// as the server sends them to the Go SDK: packed) with one shared encoder,
// as the server does.
func Zstd(opsPerBatch int, d time.Duration) (ZstdResult, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return ZstdResult{}, err
	}
	var batches [][]byte
	var text, textZ int
	for k := 0; k < 20; k++ {
		conv, dev, user := ulid.Make(), ulid.Make(), ulid.Make()
		ids, err := opid.New(newRand(uint64(k))) // the SDK's op ids
		if err != nil {
			return ZstdResult{}, err
		}
		ops := make([]model.Op, opsPerBatch)
		for i := range ops {
			id, err := ids.Next(ulid.Now())
			if err != nil {
				return ZstdResult{}, err
			}
			ops[i] = model.Op{ID: id, Conv: conv, Seq: uint64(k*opsPerBatch + i + 1), User: user,
				Dot: model.Dot{Device: dev, N: uint64(i + 1)}, Kind: model.KindMessage,
				Body: corpus[corpusIndex(k*opsPerBatch+i)], ContentType: "text/plain"}
		}
		p, err := wire.PackBatch(conv, ops)
		if err != nil {
			return ZstdResult{}, err
		}
		raw, err := proto.Marshal(&ferryv1.Ops{Packed: []*ferryv1.PackedBatch{p}, Phase: ferryv1.Phase_PHASE_BACKFILL})
		if err != nil {
			return ZstdResult{}, err
		}
		batches = append(batches, raw)
		var texts []byte
		for _, op := range ops {
			texts = append(texts, op.Body...)
		}
		text += len(texts)
		textZ += len(enc.EncodeAll(texts, nil))
	}
	var rawN, zN int64
	start := time.Now()
	var dst []byte
	for i := 0; time.Since(start) < d; i++ {
		b := batches[i%len(batches)]
		dst = enc.EncodeAll(b, dst[:0])
		rawN += int64(len(b))
		zN += int64(len(dst))
	}
	secs := time.Since(start).Seconds()
	return ZstdResult{OpsPerBatch: opsPerBatch, Ratio: float64(zN) / float64(rawN), MBPerSec: float64(rawN) / secs / 1e6,
		TextRatio: float64(textZ) / float64(text)}, nil
}

// Loopback measures TCP bandwidth over loopback, in MB/s.
func Loopback(d time.Duration) (float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		n, _ := io.Copy(io.Discard, c)
		got.Store(n)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	start := time.Now()
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	_ = c.Close()
	<-done
	return float64(got.Load()) / time.Since(start).Seconds() / 1e6, nil
}

// DeliveryResult is what a small message costs to reach a device over its
// own loopback TCP connection, both ends together: the transport's part of
// live fan-out's CPU floor.
type DeliveryResult struct {
	Conns          int           `json:"conns"`
	Bytes          int           `json:"bytes"`
	Deliveries     int           `json:"deliveries"`
	CPUPerDelivery time.Duration `json:"cpu_per_delivery_ns"`
}

// Floor is the least time a message takes to reach devices, each over its
// own connection, on cores: their count times the CPU per delivery, over
// the cores.
func (x DeliveryResult) Floor(devices, cores int) time.Duration {
	if cores < 1 {
		return 0
	}
	return time.Duration(devices) * x.CPUPerDelivery / time.Duration(cores)
}

// Deliveries measures the CPU of this process per message of size bytes
// written to one of conns loopback TCP connections and read at the other
// end, as a Go server and its devices do in live fan-out: each round
// writes the message once to every connection, from as many goroutines as
// there are Ps, and each connection's reader, a goroutine of its own, reads
// it. Nothing else is done with it: no HTTP/2 framing, no protobuf, no
// compression. A server that writes each delivery to its device's socket
// cannot deliver for less, nor can its devices receive for less.
func Deliveries(conns, size int, d time.Duration) (DeliveryResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return DeliveryResult{}, err
	}
	defer ln.Close()
	servers := make([]net.Conn, 0, conns) // the server's ends, which write
	var round sync.WaitGroup              // the reads of the round in flight
	var readers sync.WaitGroup
	defer func() {
		for _, c := range servers {
			_ = c.Close() // which ends its reader
		}
		readers.Wait()
	}()
	for range conns {
		dev, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return DeliveryResult{}, err
		}
		srv, err := ln.Accept()
		if err != nil {
			_ = dev.Close()
			return DeliveryResult{}, err
		}
		servers = append(servers, srv)
		readers.Go(func() {
			defer dev.Close()
			buf := make([]byte, size)
			for {
				if _, err := io.ReadFull(dev, buf); err != nil {
					return // the server's end closed: the measure is over
				}
				round.Done()
			}
		})
	}
	msg := make([]byte, size)
	writers := runtime.GOMAXPROCS(0)
	before, err := ProcessUsage(os.Getpid())
	if err != nil {
		return DeliveryResult{}, err
	}
	rounds := 0
	for start := time.Now(); rounds == 0 || time.Since(start) < d; rounds++ {
		round.Add(conns)
		var failed firstError
		var ws sync.WaitGroup
		for w := range writers {
			ws.Go(func() {
				for i := w; i < conns; i += writers {
					if _, err := servers[i].Write(msg); err != nil {
						failed.Store(err) // the measure ends with it, before round.Wait
					}
				}
			})
		}
		ws.Wait()
		if err := failed.Load(); err != nil {
			return DeliveryResult{}, fmt.Errorf("loopback delivery: %w", err)
		}
		round.Wait()
	}
	after, err := ProcessUsage(os.Getpid())
	if err != nil {
		return DeliveryResult{}, err
	}
	n := rounds * conns
	return DeliveryResult{Conns: conns, Bytes: size, Deliveries: n, CPUPerDelivery: (after.CPU - before.CPU) / time.Duration(n)}, nil
}
