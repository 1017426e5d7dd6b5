package pool

import "time"

// Pause stops handing out backend connections, as PgBouncer's PAUSE: new
// requests wait (up to the acquire timeout), running sessions go on, and
// every connection is closed as soon as it is idle, so the database can be
// restarted or failed over. Resume undoes it.
func (ps *Pools) Pause() {
	ps.setPaused(true)
	for _, pl := range ps.controlled() {
		pl.maintain() // close what is idle now, not at the next tick
	}
}

// Resume hands out connections again after Pause.
func (ps *Pools) Resume() { ps.setPaused(false) }

func (ps *Pools) setPaused(paused bool) {
	ps.mu.Lock()
	ps.paused = paused
	pools := ps.controlledLocked("", "")
	ps.mu.Unlock()
	for _, pl := range pools {
		pl.lim.setPaused(paused)
	}
}

// controlledLocked lists the pools of database and user (empty matches
// every one) that pause, drain and resize act on: pending pools too, whose
// first login is still being checked. A pool takes the size and pause
// state in force when it is created, under ps.mu; one created earlier must
// be reached here, or a change made while its login is checked would
// never reach it.
func (ps *Pools) controlledLocked(database, user string) []*Pool {
	out := make([]*Pool, 0, len(ps.pools)+len(ps.pending))
	for _, m := range []map[Key]*Pool{ps.pools, ps.pending} {
		for key, pl := range m {
			if (database == "" || key.Database == database) && (user == "" || key.User == user) {
				out = append(out, pl)
			}
		}
	}
	return out
}

func (ps *Pools) controlled() []*Pool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.controlledLocked("", "")
}

func (ps *Pools) isPaused() bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.paused
}

// Paused reports whether Pause is in effect.
func (ps *Pools) Paused() bool { return ps.isPaused() }

// Drain retires every pooled connection as soon as it is idle (busy ones
// when their session ends), with replacements made as usual: for rotating
// credentials or certificates without cutting anyone off.
func (ps *Pools) Drain() int {
	now := time.Now().UnixNano()
	n := 0
	for _, pl := range ps.controlled() {
		pl.mu.Lock()
		for c := range pl.live {
			if c.retireAt.Load() > now {
				c.retireAt.Store(now)
			}
			n++
		}
		pl.mu.Unlock()
		pl.maintain()
	}
	return n
}

// Resize sets the size of the pools of database and user (empty matches
// every one), and of pools created later when both are empty. Growing
// takes effect at once; shrinking closes surplus connections as they turn
// idle and never cuts a session. It returns how many pools changed.
func (ps *Pools) Resize(database, user string, size int) int {
	ps.mu.Lock()
	if database == "" && user == "" {
		ps.size = size
	}
	match := ps.controlledLocked(database, user)
	ps.mu.Unlock()
	for _, pl := range match {
		pl.resize(size)
	}
	return len(match)
}

func (pl *Pool) resize(size int) {
	pl.lim.resize(size)
	pl.shrunk.Store(true) // after the new size, for maintain's check
	pl.maintain()         // close idle connections over the new size now
}
