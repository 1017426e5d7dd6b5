package pool

import (
	"context"
	"time"
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
	// Retire one tick early, so an Acquire rarely finds a connection
	// expired and makes its client wait for a dial.
	horizon := time.Now().Add(pl.ps.tick)
	idle := pl.res.AcquireAllIdle()
	total := int(pl.res.Stat().TotalResources())
	size, _, _ := pl.lim.snapshot()
	paused := pl.ps.isPaused()
	replace := 0
	for _, res := range idle {
		c := res.Value()
		switch {
		case paused:
			pl.destroy(res, "pause")
			total--
		case total > size:
			// Shrunk at run time: the surplus goes as it turns idle.
			pl.destroy(res, "resize")
			total--
		case c.retired(horizon):
			// Replace only connections that were in use lately; an idle
			// pool shrinks through the idle timeout instead.
			if res.IdleDuration() < cfg.MaxConnIdleTime {
				replace++
			}
			if total < size && replace > 0 {
				// Room: the replacement first, so capacity never dips.
				if pl.createQuietly() {
					replace--
				}
			}
			pl.destroy(res, "lifetime")
			pl.stats.retired.Add(1)
		case res.IdleDuration() > cfg.MaxConnIdleTime && total > cfg.MinIdle:
			pl.destroy(res, "idle")
			total--
		case !c.Alive():
			pl.destroy(res, "backend-gone")
			total--
		default:
			res.ReleaseUnused()
		}
	}
	if paused {
		return
	}
	for ; replace > 0; replace-- {
		pl.createQuietly()
	}
	for int(pl.res.Stat().IdleResources()) < cfg.MinIdle && int(pl.res.Stat().TotalResources()) < size {
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
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pl.create(ctx); err != nil {
		pl.log.Warn().Err(err).Msg("could not open a replacement backend connection")
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
		if unused && pl.clients.Load() == 0 && pl.res.Stat().TotalResources() == 0 {
			delete(ps.pools, key)
			pl.res.Close()
		}
	}
}
