// Package bench measures Ferry: workloads, the physical limits they run
// against, and a report. The same workloads run from go test -bench (on an
// in-process server) and from cmd/ferry-bench (on a ferryd process, whose
// CPU and memory are then measured on their own, or a remote address).
//
// Workloads drive a System: Ferry here, peers (NATS JetStream, Centrifugo)
// in the separate module bench/peers, so that all are measured the same
// way in the same run, each workload row on every system in turn before
// the next row (Run).
//
// Latency is measured open-loop where it matters: sends follow a fixed
// schedule whatever the server's pace, and each payload carries its
// scheduled send time, so a slow server cannot hide its queueing delay
// (coordinated omission). Fan-out sends a first message to each
// conversation before the measured ones and reports it apart
// (FanoutResult.First): it pays what each device and session pay once.
// Catch-up scaling compares a history of x10 with x1 on two servers up at
// once, their runs alternating (CatchUpAlongside), so that the drift of a
// shared machine's speed falls on both. Compare measures two builds against
// each other the same way, row by row: what a change does.
package bench
