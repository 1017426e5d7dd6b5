package wire

import (
	"sync"
	"time"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/rs/zerolog"
)

// Refusal log lines are rate-limited per reason and client address, so a
// client that fails start-up in a loop (a wrong password, a scanner, a
// flood of bad packets) costs one line every refusalLogEvery, not one per
// attempt; the lines left out are counted and logged as a summary.
const refusalLogEvery = 10 * time.Second

// maxRefusalKeys bounds the limiter's memory whatever addresses connect.
const maxRefusalKeys = 10000

type refusalKey struct{ reason, addr string }

type refusalLog struct {
	mu         sync.Mutex
	last       map[refusalKey]time.Time
	suppressed map[string]int64 // by reason, since the last summary
}

// allow reports whether a refusal line for reason and addr may be logged
// now; if not, it is counted for the summary.
func (r *refusalLog) allow(reason, addr string) bool {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		r.last = map[refusalKey]time.Time{}
		r.suppressed = map[string]int64{}
	}
	k := refusalKey{reason, addr}
	if at, ok := r.last[k]; ok && now.Sub(at) < refusalLogEvery {
		r.suppressed[reason]++
		return false
	}
	if len(r.last) >= maxRefusalKeys {
		for key, at := range r.last {
			if now.Sub(at) >= refusalLogEvery {
				delete(r.last, key)
			}
		}
		if len(r.last) >= maxRefusalKeys {
			// Every key is recent: a flood from many addresses. Count
			// it rather than grow.
			r.suppressed[reason]++
			return false
		}
	}
	r.last[k] = now
	return true
}

// takeSummary returns and resets the counts of lines left out.
func (r *refusalLog) takeSummary() map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.suppressed) == 0 {
		return nil
	}
	out := r.suppressed
	r.suppressed = map[string]int64{}
	return out
}

// logRefusalSummaries logs, every refusalLogEvery, how many refusal lines
// were left out, until done is closed.
func (s *Server) logRefusalSummaries(done <-chan struct{}) {
	t := time.NewTicker(refusalLogEvery)
	defer t.Stop()
	for {
		select {
		case <-done:
			s.logRefusalSummary()
			return
		case <-t.C:
			s.logRefusalSummary()
		}
	}
}

func (s *Server) logRefusalSummary() {
	sum := s.refusals.takeSummary()
	if sum == nil {
		return
	}
	d := zerolog.Dict()
	var total int64
	for reason, n := range sum {
		d = d.Int64(reason, n)
		total += n
	}
	s.log.Info().Int64("suppressed", total).Dict("by_reason", d).
		Msg("client refusals not logged one by one (at most one line per reason and address every 10s)")
}

// refusalEvent is ev if a refusal line for reason may be logged for this
// client now, else nil (zerolog ignores a nil event).
func (ss *session) refusalEvent(ev *zerolog.Event, reason reasons.Reason) *zerolog.Event {
	if !ss.srv.refusals.allow(string(reason), remoteIP(ss.conn)) {
		ev.Discard()
		return nil
	}
	return ev
}
