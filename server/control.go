package server

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// controlStats counts the operator's tools the server did (ferryd's
// control socket: check, backup, ...), for its metrics.
type controlStats struct {
	mu         sync.Mutex
	calls      map[[2]string]uint64 // by tool and result
	lastBackup time.Time            // the last backup written
}

// ControlCall counts a call of an operator's tool that the server did for
// ferryd's control socket, by result: "ok", "error", or "problems" (a
// check that found the store inconsistent). A backup that succeeded at
// time at is the last one written.
func (s *Server) ControlCall(tool, result string, at time.Time) {
	c := &s.control
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[[2]string]uint64{}
	}
	c.calls[[2]string{tool, result}]++
	if tool == "backup" && result == "ok" {
		c.lastBackup = at
	}
}

var (
	dControlCalls = desc("ferry_control_calls_total", "Calls of ferryd's tools (check, backup, ...) that the server did, through its control socket, by tool and result: ok, error, or problems (a check that found the store inconsistent).", "tool", "result")
	dLastBackup   = desc("ferry_backup_last_success_timestamp_seconds", "When the server last wrote a backup for ferryd backup, in Unix seconds; 0 before the first since it started.")
)

// collectControl sends the control calls' metrics.
func (s *Server) collectControl(ch chan<- prometheus.Metric) {
	c := &s.control
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, n := range c.calls {
		ch <- prometheus.MustNewConstMetric(dControlCalls, prometheus.CounterValue, float64(n), k[0], k[1])
	}
	last := 0.0
	if !c.lastBackup.IsZero() {
		last = float64(c.lastBackup.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(dLastBackup, prometheus.GaugeValue, last)
}
