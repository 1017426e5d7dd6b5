package pool

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// counters are a pool's running totals; puddle's Stat gives the gauges.
type counters struct {
	waiting         atomic.Int64
	created         atomic.Int64
	retired         atomic.Int64
	rollbacks       atomic.Int64
	dialFailures    atomic.Int64
	acquireTimeouts atomic.Int64

	mu          sync.Mutex
	acquires    int64
	waitTotal   time.Duration
	waitMax     time.Duration
	closedByWhy map[string]int64
}

func (c *counters) acquired(wait time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.acquires++
	c.waitTotal += wait
	c.waitMax = max(c.waitMax, wait)
}

func (c *counters) closed(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closedByWhy == nil {
		c.closedByWhy = map[string]int64{}
	}
	c.closedByWhy[reason]++
}

// Stats is a snapshot of one pool, for the admin API and metrics.
type Stats struct {
	Database string `json:"database"`
	User     string `json:"user"`
	Size     int    `json:"size"`

	Total        int   `json:"total"`
	Idle         int   `json:"idle"`
	InUse        int   `json:"in_use"`
	Constructing int   `json:"constructing"`
	Waiting      int64 `json:"clients_waiting"`
	Clients      int64 `json:"clients"`

	Acquires        int64         `json:"acquires"`
	AcquireWait     time.Duration `json:"acquire_wait_total_ns"`
	AcquireWaitMax  time.Duration `json:"acquire_wait_max_ns"`
	AcquireTimeouts int64         `json:"acquire_timeouts"`

	Created      int64            `json:"created"`
	Retired      int64            `json:"retired"`
	Closed       map[string]int64 `json:"closed_by_reason"`
	DialFailures int64            `json:"dial_failures"`
	Rollbacks    int64            `json:"rollbacks_on_release"`
	OldestAge    time.Duration    `json:"oldest_connection_age_ns"`
}

// Stats returns a snapshot of every pool, ordered by database and user.
func (ps *Pools) Stats() []Stats {
	var out []Stats
	for _, pl := range ps.all() {
		out = append(out, pl.Stats())
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Database != out[j].Database {
			return out[i].Database < out[j].Database
		}
		return out[i].User < out[j].User
	})
	return out
}

// Stats is a snapshot of the pool.
func (pl *Pool) Stats() Stats {
	st := pl.res.Stat()
	s := Stats{
		Database: pl.key.Database, User: pl.key.User, Size: int(st.MaxResources()),
		Total: int(st.TotalResources()), Idle: int(st.IdleResources()),
		InUse: int(st.AcquiredResources()), Constructing: int(st.ConstructingResources()),
		Waiting: pl.stats.waiting.Load(), Clients: pl.clients.Load(),
		AcquireTimeouts: pl.stats.acquireTimeouts.Load(),
		Created:         pl.stats.created.Load(), Retired: pl.stats.retired.Load(),
		DialFailures: pl.stats.dialFailures.Load(), Rollbacks: pl.stats.rollbacks.Load(),
		Closed: map[string]int64{},
	}
	pl.stats.mu.Lock()
	s.Acquires, s.AcquireWait, s.AcquireWaitMax = pl.stats.acquires, pl.stats.waitTotal, pl.stats.waitMax
	for k, v := range pl.stats.closedByWhy {
		s.Closed[k] = v
	}
	pl.stats.mu.Unlock()
	now := time.Now()
	pl.mu.Lock()
	for c := range pl.live {
		s.OldestAge = max(s.OldestAge, now.Sub(c.Created()))
	}
	pl.mu.Unlock()
	return s
}
