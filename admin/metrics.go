package admin

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/querycop/querycop/pool"
)

// collector reads every figure at scrape time from the pools, the client
// side and the token source: nothing is counted twice.
type collector struct {
	deps  Deps
	ready func(context.Context) bool

	poolConns, poolSize, poolWaiting, poolClients, poolOldest *prometheus.Desc
	poolOldestWait                                            *prometheus.Desc
	acquires, acquireTimeouts, acquireWait, created, closed   *prometheus.Desc
	dialFailures                                              *prometheus.Desc
	clientsConnected, clientsRefused, relayBytes, relayMsgs   *prometheus.Desc
	tokenMints, tokenFailures, tokenConsecutive, tokenExpiry  *prometheus.Desc
	tokenProvider                                             *prometheus.Desc
	paused, readyDesc, probes                                 *prometheus.Desc
	transactions, queries, backendWait, backendHeld, prepared *prometheus.Desc
	txPins, txPinned, disconnects                             *prometheus.Desc
	logins, authQuery                                         *prometheus.Desc
}

func newCollector(deps Deps, ready func(context.Context) bool) *collector {
	pl := []string{"database", "user"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("querycop_"+name, help, labels, nil)
	}
	return &collector{
		deps:             deps,
		ready:            ready,
		readyDesc:        d("ready", "1 while /readyz answers 200 (the gateway would be sent clients), else 0."),
		poolConns:        d("pool_connections", "Backend connections in the pool, by state (idle, in_use, constructing).", "database", "user", "state"),
		poolSize:         d("pool_size", "Most backend connections the pool may hold.", pl...),
		poolWaiting:      d("pool_clients_waiting", "Clients waiting for a backend connection of the pool.", pl...),
		poolOldestWait:   d("pool_oldest_wait_seconds", "How long the pool's longest-waiting client has waited so far (0 when none waits).", pl...),
		poolClients:      d("pool_clients", "Authenticated clients using the pool.", pl...),
		poolOldest:       d("pool_oldest_connection_age_seconds", "Age of the pool's oldest backend connection.", pl...),
		acquires:         d("pool_acquires_total", "Backend connections handed to clients.", pl...),
		acquireTimeouts:  d("pool_acquire_timeouts_total", "Clients refused after waiting GATEKEEPER_POOL_ACQUIRE_TIMEOUT for a full pool.", pl...),
		acquireWait:      d("pool_acquire_wait_seconds", "Time clients waited for a backend connection.", pl...),
		created:          d("pool_connections_created_total", "Backend connections opened.", pl...),
		closed:           d("pool_connections_closed_total", "Backend connections closed, by reason (lifetime = retired before its lifetime or token horizon).", "database", "user", "reason"),
		dialFailures:     d("pool_dial_failures_total", "Failed attempts to open a backend connection.", pl...),
		clientsConnected: d("clients_connected", "Client connections open on the pool port."),
		clientsRefused:   d("clients_refused_total", "Clients refused, by reason.", "reason"),
		disconnects:      d("client_disconnects_total", "Client sessions that ended after start-up, by reason.", "reason"),
		probes:           d("client_probes_total", "Connections to the pool port closed before their first byte (TCP health checks)."),
		relayBytes:       d("relay_bytes_total", "Bytes relayed, by direction (from_clients, to_clients).", "direction"),
		relayMsgs:        d("relay_messages_total", "Protocol messages relayed, by direction (from_clients, to_clients).", "direction"),
		tokenMints:       d("token_mints_total", "Tokens minted: successful runs of the token command, or calls of the built-in provider.", "user"),
		tokenFailures:    d("token_mint_failures_total", "Failed runs of the token command, or failed calls of the built-in provider.", "user"),
		tokenConsecutive: d("token_consecutive_failures", "Failed mints (token command or provider) since the last success.", "user"),
		tokenExpiry:      d("token_expiry_seconds", "Seconds until the current token expires (negative: expired or none).", "user"),
		tokenProvider:    d("token_provider", "1, labelled with the token provider in force (command, azure, aws-rds, gcp); absent in pass-through mode.", "provider"),
		paused:           d("paused", "1 while the pools are paused through the admin API."),
		transactions:     d("transactions_total", "Transaction mode: backend connections lent to clients (one per transaction or single statement)."),
		queries:          d("queries_total", "Transaction mode: Query and Execute messages relayed."),
		backendWait:      d("backend_wait_seconds_total", "Transaction mode: time clients waited for a backend connection."),
		backendHeld:      d("backend_held_seconds_total", "Transaction mode: time clients held backend connections."),
		txPins:           d("tx_pins_total", "Transaction mode: clients pinned to their backend until they disconnect, by reason (session state the gateway cannot carry).", "reason"),
		txPinned:         d("tx_pinned_clients", "Transaction mode: clients pinned to their backend now."),
		logins:           d("client_logins_total", "Clients that logged in, by how the client leg authenticated (scram-sha-256-plus, scram-sha-256, md5, cleartext, none).", "method"),
		authQuery:        d("auth_query_lookups_total", "Auth query (GATEKEEPER_AUTH_USER) lookups, by result (cached, scram, no_scram, not_found, failed).", "result"),
		prepared:         d("prepared_statements_total", "Transaction mode: prepared statement uses, by result (hit: already on the backend, miss: prepared there first, eviction: closed to stay within GATEKEEPER_MAX_PREPARED_STATEMENTS).", "result"),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	prometheus.DescribeByCollect(c, ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	if c.ready != nil {
		// /readyz's cached verdict: at most one backend probe per
		// readyCacheFor, however often both are asked.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ready := 0.0
		if c.ready(ctx) {
			ready = 1
		}
		cancel()
		gauge(c.readyDesc, ready)
	}
	if c.deps.Pools != nil {
		paused := 0.0
		if c.deps.Pools.Paused() {
			paused = 1
		}
		gauge(c.paused, paused)
		for _, s := range c.deps.Pools.Stats() {
			db, user := s.Database, s.User
			gauge(c.poolConns, float64(s.Idle), db, user, "idle")
			gauge(c.poolConns, float64(s.InUse), db, user, "in_use")
			gauge(c.poolConns, float64(s.Constructing), db, user, "constructing")
			gauge(c.poolSize, float64(s.Size), db, user)
			gauge(c.poolWaiting, float64(s.Waiting), db, user)
			gauge(c.poolOldestWait, s.OldestWait.Seconds(), db, user)
			gauge(c.poolClients, float64(s.Clients), db, user)
			gauge(c.poolOldest, s.OldestAge.Seconds(), db, user)
			counter(c.acquires, float64(s.Acquires), db, user)
			counter(c.acquireTimeouts, float64(s.AcquireTimeouts), db, user)
			counter(c.created, float64(s.Created), db, user)
			counter(c.dialFailures, float64(s.DialFailures), db, user)
			for reason, n := range s.Closed {
				counter(c.closed, float64(n), db, user, reason)
			}
			buckets := make(map[float64]uint64, len(pool.AcquireWaitBounds))
			for i, bound := range pool.AcquireWaitBounds {
				if i < len(s.AcquireWaitCumulative) {
					buckets[bound] = s.AcquireWaitCumulative[i]
				}
			}
			ch <- prometheus.MustNewConstHistogram(c.acquireWait, uint64(s.Acquires), s.AcquireWait.Seconds(), buckets, db, user)
		}
	}
	if c.deps.Clients != nil {
		st := c.deps.Clients.Stats()
		gauge(c.clientsConnected, float64(st.Connected))
		for reason, n := range st.Refused {
			counter(c.clientsRefused, float64(n), reason)
		}
		for reason, n := range st.Disconnects {
			counter(c.disconnects, float64(n), reason)
		}
		counter(c.probes, float64(st.Probes))
		counter(c.relayBytes, float64(st.BytesFromClients), "from_clients")
		counter(c.relayBytes, float64(st.BytesToClients), "to_clients")
		counter(c.relayMsgs, float64(st.MessagesFromClients), "from_clients")
		counter(c.relayMsgs, float64(st.MessagesToClients), "to_clients")
		counter(c.transactions, float64(st.Transactions))
		counter(c.queries, float64(st.Queries))
		counter(c.backendWait, st.BackendWait.Seconds())
		counter(c.backendHeld, st.BackendHeld.Seconds())
		counter(c.prepared, float64(st.PreparedStatementHits), "hit")
		counter(c.prepared, float64(st.PreparedStatementMisses), "miss")
		counter(c.prepared, float64(st.PreparedStatementEvictions), "eviction")
		for method, n := range st.Logins {
			counter(c.logins, float64(n), method)
		}
		for result, n := range st.AuthQuery {
			counter(c.authQuery, float64(n), result)
		}
		for reason, n := range st.Pins {
			counter(c.txPins, float64(n), reason)
		}
		gauge(c.txPinned, float64(st.PinnedClients))
	}
	if c.deps.Tokens != nil {
		if p, ok := c.deps.Tokens.(interface{ Provider() string }); ok {
			gauge(c.tokenProvider, 1, p.Provider())
		}
		now := time.Now()
		for _, t := range c.deps.Tokens.Status() {
			counter(c.tokenMints, float64(t.Mints), t.User)
			counter(c.tokenFailures, float64(t.Failures), t.User)
			gauge(c.tokenConsecutive, float64(t.ConsecutiveFailures), t.User)
			expiry := -1.0
			if !t.Expiry.IsZero() {
				expiry = t.Expiry.Sub(now).Seconds()
			}
			gauge(c.tokenExpiry, expiry, t.User)
		}
	}
}
