package pool

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/querycop/querycop/internal/reasons"

	"github.com/jackc/puddle/v2"

	"github.com/querycop/querycop/token"
)

// janitor is the one goroutine that keeps every pool: it retires
// connections ahead of their retireAt (creating the replacement first when
// there is room), closes connections idle too long, drops dead ones and
// keeps MinIdle ready. Busy connections are never touched.
func (ps *Pools) janitor() {
	defer close(ps.done)
	t := time.NewTicker(ps.tick)
	defer t.Stop()
	for {
		select {
		case <-ps.stop:
			return
		case <-t.C:
		}
		for _, pl := range ps.all() {
			pl.maintain()
		}
		ps.forgetUnused()
	}
}

func (pl *Pool) maintain() {
	cfg := pl.ps.cfg
	cur := pl.res
	size := pl.size()
	paused := pl.ps.isPaused()
	// Retire one tick early, so an Acquire rarely finds a connection
	// expired and makes its client wait for a dial.
	horizon := time.Now().Add(pl.ps.tick)

	// While the janitor holds idle connections, a client finding none
	// idle would open one more than the size allows; so the janitor holds
	// a limiter slot for each connection it examines, and gives each back
	// with its connection. (Paused, no client gets a slot.)
	slots := 0
	if !paused {
		for n := int(cur.Stat().IdleResources()); slots < n && pl.lim.tryAcquire(); slots++ {
		}
	}
	done := func() {
		if slots > 0 {
			slots--
			pl.lim.release()
		}
	}
	defer func() {
		for slots > 0 {
			done()
		}
	}()
	idle := cur.AcquireAllIdle()
	if !paused && len(idle) > slots {
		for _, res := range idle[slots:] {
			res.ReleaseUnused() // examined at a later tick
		}
		idle = idle[:slots]
	}

	var retiring []*puddle.Resource[*conn]
	total := int(cur.Stat().TotalResources())
	// The connections closed here wait for their server processes side by
	// side: each may take terminateWait (a silent server), and one after
	// another a pause of a large pool would hold the janitor, which keeps
	// every pool, for that many times over.
	var closing sync.WaitGroup
	closeIdle := func(res *puddle.Resource[*conn], reason reasons.Reason) {
		c := pl.startClose(res, reason) // counted before its slot goes back
		closing.Go(func() { pl.awaitClose(c, reason) })
		total--
	}
	for _, res := range idle {
		c := res.Value()
		switch {
		case paused:
			closeIdle(res, reasons.Pause)
		case total > size:
			closeIdle(res, reasons.Resize) // shrunk: idle ones go first
		case c.retired(horizon):
			retiring = append(retiring, res)
			continue
		case res.IdleDuration() > cfg.MaxConnIdleTime && total > cfg.MinIdle:
			closeIdle(res, reasons.Idle)
		case !c.Alive():
			closeIdle(res, reasons.BackendGone)
		default:
			// Back at once: while the janitor holds a connection, clients
			// wait for it.
			res.ReleaseUnused()
		}
		done()
	}
	closing.Wait()
	for _, res := range retiring {
		// Replace only connections that were in use lately; an idle pool
		// shrinks through the idle timeout instead.
		replace := res.IdleDuration() < cfg.MaxConnIdleTime
		if replace && int(cur.Stat().TotalResources()) < size {
			// Room: the replacement first, so capacity never dips.
			replace = !pl.createQuietly()
		}
		pl.stats.retired.Add(1) // before the close the server sees
		pl.destroy(res, reasons.Lifetime)
		done()
		if replace {
			pl.createQuietly()
		}
	}
	if pl.shrunk.Load() && pl.total() <= pl.size() {
		pl.shrunk.Store(false)
		// A resize between the check and the store set the new size
		// first: look again.
		if pl.total() > pl.size() {
			pl.shrunk.Store(true)
		}
	}
	if paused {
		return
	}
	for int(cur.Stat().IdleResources()) < cfg.MinIdle && int(cur.Stat().TotalResources()) < size {
		if !pl.createQuietly() {
			break
		}
	}
}

// createQuietly adds one idle connection, logging a failure instead of
// returning it: nobody waits on the janitor.
func (pl *Pool) createQuietly() bool {
	if !pl.usable.Load() {
		// Never dial with a credential the server refused.
		return false
	}
	ctx, cancel := context.WithTimeout(token.InBackground(context.Background()), time.Minute)
	defer cancel()
	if err := pl.create(ctx); err != nil {
		if !errors.Is(err, puddle.ErrNotAvailable) { // full: nothing to replace
			pl.log.Warn().Err(err).Msg("could not open a replacement backend connection")
		}
		return false
	}
	return true
}

// forgetUnused drops pools that have no connection and no client, and have
// not been used for a while, so stale credentials do not accumulate.
func (ps *Pools) forgetUnused() {
	keep := max(ps.cfg.AuthCacheTTL, ps.cfg.MaxConnIdleTime)
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for key, pl := range ps.pools {
		pl.mu.Lock()
		unused := time.Since(pl.lastUsed) > keep
		pl.mu.Unlock()
		if unused && pl.clients.Load() == 0 && pl.total() == 0 {
			delete(ps.pools, key)
			pl.close()
		}
	}
}
