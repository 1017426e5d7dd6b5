package pool

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/querycop/querycop/internal/reasons"
)

// counters are a pool's running totals; puddle's Stat gives the gauges.
type counters struct {
	created         atomic.Int64
	retired         atomic.Int64
	rollbacks       atomic.Int64
	dialFailures    atomic.Int64
	acquireTimeouts atomic.Int64

	mu          sync.Mutex
	acquires    int64
	waitTotal   time.Duration
	waitMax     time.Duration
	waitBuckets [len(AcquireWaitBounds)]int64 // counts at or below each bound, not cumulative
	closedByWhy map[string]int64
}

// AcquireWaitBounds are the upper bounds, in seconds, of the acquire-wait
// histogram: from an idle connection handed out at once to a full pool.
var AcquireWaitBounds = [...]float64{0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30}

func (c *counters) acquired(wait time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.acquires++
	c.waitTotal += wait
	c.waitMax = max(c.waitMax, wait)
	for i, bound := range AcquireWaitBounds {
		if wait.Seconds() <= bound {
			c.waitBuckets[i]++
			break
		}
	}
}

func (c *counters) closed(reason reasons.Reason) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closedByWhy == nil {
		c.closedByWhy = map[string]int64{}
	}
	c.closedByWhy[string(reason)]++
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
	// OldestWait is how long the longest-waiting client has waited so far
	// (PgBouncer's maxwait); 0 when nobody waits.
	OldestWait time.Duration `json:"oldest_wait_ns"`
	Clients    int64         `json:"clients"`

	Acquires        int64         `json:"acquires"`
	AcquireWait     time.Duration `json:"acquire_wait_total_ns"`
	AcquireWaitMax  time.Duration `json:"acquire_wait_max_ns"`
	AcquireTimeouts int64         `json:"acquire_timeouts"`
	// AcquireWaitCumulative[i] counts acquires that waited at most
	// AcquireWaitBounds[i] seconds.
	AcquireWaitCumulative []uint64 `json:"-"`

	Created      int64            `json:"created"`
	Retired      int64            `json:"retired"`
	Closed       map[string]int64 `json:"closed_by_reason"`
	DialFailures int64            `json:"dial_failures"`
	Rollbacks    int64            `json:"rollbacks_on_release"`
	OldestAge    time.Duration    `json:"oldest_connection_age_ns"`
}

// Stats returns a snapshot per database and user, ordered by them. Pools of
// the same database and user with different credentials (a password change
// in pass-through mode) are added together: the credential is never shown.
func (ps *Pools) Stats() []Stats {
	byKey := map[[2]string]*Stats{}
	for _, pl := range ps.all() {
		s := pl.Stats()
		k := [2]string{s.Database, s.User}
		if prev := byKey[k]; prev != nil {
			prev.merge(s)
		} else {
			byKey[k] = &s
		}
	}
	out := make([]Stats, 0, len(byKey))
	for _, s := range byKey {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Database != out[j].Database {
			return out[i].Database < out[j].Database
		}
		return out[i].User < out[j].User
	})
	return out
}

func (s *Stats) merge(o Stats) {
	s.Size = max(s.Size, o.Size)
	s.Total += o.Total
	s.Idle += o.Idle
	s.InUse += o.InUse
	s.Constructing += o.Constructing
	s.Waiting += o.Waiting
	s.OldestWait = max(s.OldestWait, o.OldestWait)
	s.Clients += o.Clients
	s.Acquires += o.Acquires
	s.AcquireWait += o.AcquireWait
	s.AcquireWaitMax = max(s.AcquireWaitMax, o.AcquireWaitMax)
	s.AcquireTimeouts += o.AcquireTimeouts
	for i := range s.AcquireWaitCumulative {
		s.AcquireWaitCumulative[i] += o.AcquireWaitCumulative[i]
	}
	s.Created += o.Created
	s.Retired += o.Retired
	for k, v := range o.Closed {
		s.Closed[k] += v
	}
	s.DialFailures += o.DialFailures
	s.Rollbacks += o.Rollbacks
	s.OldestAge = max(s.OldestAge, o.OldestAge)
}

// Stats is a snapshot of the pool.
func (pl *Pool) Stats() Stats {
	size, _, waiting := pl.lim.snapshot()
	s := Stats{
		Database: pl.key.Database, User: pl.key.User, Size: size, Waiting: int64(waiting),
		OldestWait:      pl.lim.oldestWait(time.Now()),
		Clients:         pl.clients.Load(),
		AcquireTimeouts: pl.stats.acquireTimeouts.Load(),
		Created:         pl.stats.created.Load(), Retired: pl.stats.retired.Load(),
		DialFailures: pl.stats.dialFailures.Load(), Rollbacks: pl.stats.rollbacks.Load(),
		Closed: map[string]int64{},
	}
	pl.stats.mu.Lock()
	s.Acquires, s.AcquireWait, s.AcquireWaitMax = pl.stats.acquires, pl.stats.waitTotal, pl.stats.waitMax
	var running uint64
	for _, n := range pl.stats.waitBuckets {
		running += uint64(n)
		s.AcquireWaitCumulative = append(s.AcquireWaitCumulative, running)
	}
	for k, v := range pl.stats.closedByWhy {
		s.Closed[k] = v
	}
	pl.stats.mu.Unlock()
	now := time.Now()
	pl.mu.Lock()
	st := pl.res.Stat()
	s.Total = int(st.TotalResources()) + int(pl.closing.Load()) // as the server counts them
	s.Idle = int(st.IdleResources())
	s.InUse = int(st.AcquiredResources())
	s.Constructing = int(st.ConstructingResources())
	for c := range pl.live {
		s.OldestAge = max(s.OldestAge, now.Sub(c.Created()))
	}
	pl.mu.Unlock()
	return s
}
