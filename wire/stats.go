package wire

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/querycop/querycop/internal/reasons"
)

// ClientInfo describes one connected client for the admin API.
type ClientInfo struct {
	ID             uint64    `json:"id"`
	Address        string    `json:"address"`
	User           string    `json:"user,omitempty"`
	Database       string    `json:"database,omitempty"`
	State          string    `json:"state"` // login, idle (no backend) or active
	ConnectedSince time.Time `json:"connected_since"`
	BackendPID     uint32    `json:"backend_pid,omitempty"`
	TLS            bool      `json:"tls"`
	// Pinned is why a transaction-mode client keeps its backend until it
	// disconnects.
	Pinned string `json:"pinned,omitempty"`
}

// Stats are the server's running totals for metrics.
type Stats struct {
	Connected           int64            `json:"connected"`
	Refused             map[string]int64 `json:"refused_by_reason"`
	Probes              int64            `json:"probes"` // connections closed before their first byte
	BytesFromClients    int64            `json:"bytes_from_clients"`
	BytesToClients      int64            `json:"bytes_to_clients"`
	MessagesFromClients int64            `json:"messages_from_clients"`
	MessagesToClients   int64            `json:"messages_to_clients"`

	// Transaction mode.
	Transactions               int64         `json:"transactions"`
	Queries                    int64         `json:"queries"`
	BackendWait                time.Duration `json:"backend_wait_total_ns"`
	BackendHeld                time.Duration `json:"backend_held_total_ns"`
	PreparedStatementHits      int64         `json:"prepared_statement_hits"`
	PreparedStatementMisses    int64         `json:"prepared_statement_misses"`
	PreparedStatementEvictions int64         `json:"prepared_statement_evictions"`
	// Pins counts clients pinned to their backend, by reason; PinnedClients
	// is how many are pinned now.
	Pins          map[string]int64 `json:"pins_by_reason"`
	PinnedClients int64            `json:"pinned_clients"`
	// Disconnects counts sessions that ended after start-up, by reason.
	Disconnects map[string]int64 `json:"disconnects_by_reason"`

	// Logins counts clients authenticated, by the method the client leg
	// used (see loginMethods); AuthQuery counts auth query lookups by
	// result (see authQueryResults), nil without GATEKEEPER_AUTH_USER.
	Logins    map[string]int64 `json:"logins_by_method"`
	AuthQuery map[string]int64 `json:"auth_query_lookups_by_result,omitempty"`
}

// relayCounters are kept per session, so the relay's hot path never
// touches a cache line another core's session writes; the server adds them
// up at scrape time, and keeps the totals of sessions that ended.
type relayCounters struct {
	bytesIn, bytesOut atomic.Int64
	msgsIn, msgsOut   atomic.Int64

	// transaction mode
	transactions, queries               atomic.Int64
	waitNanos, heldNanos                atomic.Int64
	prepHits, prepMisses, prepEvictions atomic.Int64
}

func (c *relayCounters) addTo(dst *relayCounters) {
	for _, f := range [...][2]*atomic.Int64{
		{&c.bytesIn, &dst.bytesIn}, {&c.bytesOut, &dst.bytesOut},
		{&c.msgsIn, &dst.msgsIn}, {&c.msgsOut, &dst.msgsOut},
		{&c.transactions, &dst.transactions}, {&c.queries, &dst.queries},
		{&c.waitNanos, &dst.waitNanos}, {&c.heldNanos, &dst.heldNanos},
		{&c.prepHits, &dst.prepHits}, {&c.prepMisses, &dst.prepMisses}, {&c.prepEvictions, &dst.prepEvictions},
	} {
		f[1].Add(f[0].Load())
	}
}

type serverCounters struct {
	ended  relayCounters // totals of sessions that have ended
	probes atomic.Int64
	// endedByDB splits ended by the sessions' database, for the admin
	// console's SHOW STATS. Guarded, like ended, by Server.mu.
	endedByDB map[string]*relayCounters

	mu          sync.Mutex
	refused     map[string]int64
	pins        map[string]int64
	logins      map[string]int64
	disconnects map[string]int64
}

// add counts one event of key in the map m points to.
func (c *serverCounters) add(m *map[string]int64, key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *m == nil {
		*m = map[string]int64{}
	}
	(*m)[key]++
}

func (c *serverCounters) disconnect(reason reasons.Reason) { c.add(&c.disconnects, string(reason)) }
func (c *serverCounters) login(method string)              { c.add(&c.logins, method) }
func (c *serverCounters) pin(reason pinReason)             { c.add(&c.pins, string(reason)) }
func (c *serverCounters) refuse(reason reasons.Reason)     { c.add(&c.refused, string(reason)) }

// sessionEnded keeps an ended session's totals, overall and by database.
// The caller holds Server.mu.
func (c *serverCounters) sessionEnded(ss *session) {
	ss.rc.addTo(&c.ended)
	if ss.rc.msgsIn.Load() == 0 {
		return // refused or silent: nothing to count, and no database to keep
	}
	db := ss.database()
	if c.endedByDB == nil {
		c.endedByDB = map[string]*relayCounters{}
	}
	t := c.endedByDB[db]
	if t == nil {
		t = &relayCounters{}
		c.endedByDB[db] = t
	}
	ss.rc.addTo(t)
}

func (ss *session) database() string {
	ss.infoMu.Lock()
	defer ss.infoMu.Unlock()
	return ss.view.Database
}

// relayStats fills the relay and transaction-mode fields of a Stats.
func (c *relayCounters) relayStats() Stats {
	return Stats{
		BytesFromClients: c.bytesIn.Load(), BytesToClients: c.bytesOut.Load(),
		MessagesFromClients: c.msgsIn.Load(), MessagesToClients: c.msgsOut.Load(),
		Transactions: c.transactions.Load(), Queries: c.queries.Load(),
		BackendWait: time.Duration(c.waitNanos.Load()), BackendHeld: time.Duration(c.heldNanos.Load()),
		PreparedStatementHits: c.prepHits.Load(), PreparedStatementMisses: c.prepMisses.Load(),
		PreparedStatementEvictions: c.prepEvictions.Load(),
	}
}

// StatsByDatabase splits the relay and transaction-mode totals by the
// clients' database (Connected and Refused are left empty).
func (s *Server) StatsByDatabase() map[string]Stats {
	sums := map[string]*relayCounters{}
	add := func(db string, c *relayCounters) {
		t := sums[db]
		if t == nil {
			t = &relayCounters{}
			sums[db] = t
		}
		c.addTo(t)
	}
	s.mu.Lock()
	for db, c := range s.counters.endedByDB {
		add(db, c)
	}
	for ss := range s.live {
		if db := ss.database(); db != "" {
			add(db, &ss.rc)
		}
	}
	s.mu.Unlock()
	out := make(map[string]Stats, len(sums))
	for db, c := range sums {
		out[db] = c.relayStats()
	}
	return out
}

// Stats returns the running totals.
func (s *Server) Stats() Stats {
	var sum relayCounters
	s.mu.Lock()
	s.counters.ended.addTo(&sum)
	for ss := range s.live {
		ss.rc.addTo(&sum)
	}
	s.mu.Unlock()
	st := sum.relayStats()
	st.Connected = s.clients.Load()
	st.Refused = map[string]int64{}
	st.Probes = s.counters.probes.Load()
	st.Pins = make(map[string]int64, len(pinReasons))
	for _, r := range pinReasons {
		st.Pins[string(r)] = 0
	}
	st.PinnedClients = s.pinnedNow.Load()
	s.counters.mu.Lock()
	for k, v := range s.counters.refused {
		st.Refused[k] = v
	}
	for k, v := range s.counters.pins {
		st.Pins[k] = v
	}
	st.Disconnects = map[string]int64{}
	for k, v := range s.counters.disconnects {
		st.Disconnects[k] = v
	}
	st.Logins = make(map[string]int64, len(loginMethods))
	for _, m := range loginMethods {
		st.Logins[m] = s.counters.logins[m]
	}
	s.counters.mu.Unlock()
	if s.authQuery != nil {
		st.AuthQuery = s.authQuery.stats()
	}
	return st
}

// Clients lists the connected clients, oldest first.
func (s *Server) Clients() []ClientInfo {
	s.mu.Lock()
	out := make([]ClientInfo, 0, len(s.live))
	for ss := range s.live {
		out = append(out, ss.info())
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (ss *session) info() ClientInfo {
	ss.infoMu.Lock()
	ci := ss.view
	ss.infoMu.Unlock()
	if lease := ss.lease.Load(); lease != nil {
		ci.State = "active"
		ci.BackendPID = lease.Conn().PID()
	}
	return ci
}
