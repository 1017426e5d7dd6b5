package console

import (
	"sort"
	"time"
)

// statsPeriod is PgBouncer's default stats_period: SHOW STATS's averages
// cover the last such interval.
const statsPeriod = 60 * time.Second

// totals are one database's running totals, in PgBouncer's units (times
// in microseconds).
type totals struct {
	assignments, xacts, queries, received, sent     uint64
	xactTime, queryTime, waitTime                   uint64
	clientParses, serverParses, binds, clientLogins uint64
}

func (t totals) fields() [12]uint64 {
	return [12]uint64{t.assignments, t.xacts, t.queries, t.received, t.sent,
		t.xactTime, t.queryTime, t.waitTime, t.clientParses, t.serverParses, t.binds, t.clientLogins}
}

// statsSample is every database's totals at one moment.
type statsSample struct {
	at     time.Time
	byName map[string]totals
}

func nonNeg(v int64) uint64 {
	if v < 0 {
		return 0
	}
	return uint64(v)
}

// currentTotals reads the figures Querycop has, per database.
func (c *Console) currentTotals() map[string]totals {
	out := map[string]totals{}
	for _, f := range c.figures() {
		out[f.name] = totals{
			assignments:  nonNeg(f.assignments),
			xacts:        nonNeg(f.xactCount),
			queries:      nonNeg(f.queryCount),
			received:     nonNeg(f.relay.BytesFromClients),
			sent:         nonNeg(f.relay.BytesToClients),
			xactTime:     nonNeg(f.xactMicros),
			waitTime:     nonNeg(f.waitMicros),
			clientParses: nonNeg(f.clientParse),
			serverParses: nonNeg(f.serverParse),
		}
	}
	return out
}

// samples returns the two latest samples, taking a new one when the
// newer is statsPeriod old: PgBouncer's averages cover the interval between
// them. The older is zero until two samples were taken.
func (c *Console) samplesAt(now time.Time, cur map[string]totals) (older, newer statsSample) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.samples[1].at.IsZero() || now.Sub(c.samples[1].at) >= statsPeriod {
		c.samples[0] = c.samples[1]
		c.samples[1] = statsSample{at: now, byName: cur}
	}
	return c.samples[0], c.samples[1]
}

// averageOf is PgBouncer's average between two totals secs apart: counts
// and bytes per second, times per transaction, query or assignment.
func averageOf(o, n totals, secs float64) totals {
	d := func(a, b uint64) uint64 { // counters restart when a pool is forgotten
		if a < b {
			return 0
		}
		return a - b
	}
	rate := func(a, b uint64) uint64 { return uint64(float64(d(a, b)) / secs) }
	per := func(a, b, na, nb uint64) uint64 {
		if n := d(na, nb); n > 0 {
			return d(a, b) / n
		}
		return 0
	}
	return totals{
		assignments:  rate(n.assignments, o.assignments),
		xacts:        rate(n.xacts, o.xacts),
		queries:      rate(n.queries, o.queries),
		received:     rate(n.received, o.received),
		sent:         rate(n.sent, o.sent),
		xactTime:     per(n.xactTime, o.xactTime, n.xacts, o.xacts),
		queryTime:    per(n.queryTime, o.queryTime, n.queries, o.queries),
		waitTime:     per(n.waitTime, o.waitTime, n.assignments, o.assignments),
		clientParses: rate(n.clientParses, o.clientParses),
		serverParses: rate(n.serverParses, o.serverParses),
		binds:        rate(n.binds, o.binds),
		clientLogins: rate(n.clientLogins, o.clientLogins),
	}
}

// averages are each database's averages over the latest interval; empty
// until there is one.
func (c *Console) averages(now time.Time, cur map[string]totals) map[string]totals {
	older, newer := c.samplesAt(now, cur)
	out := map[string]totals{}
	if older.at.IsZero() {
		return out
	}
	secs := newer.at.Sub(older.at).Seconds()
	for name, n := range newer.byName {
		out[name] = averageOf(older.byName[name], n, secs)
	}
	return out
}

func (t totals) plus(u totals) totals {
	a, b := t.fields(), u.fields()
	for i := range a {
		a[i] += b[i]
	}
	return fromFields(a)
}

type statsKind int

const (
	statsAll statsKind = iota
	statsTotals
	statsAverages
)

var (
	totalColumns = []string{
		"server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
		"xact_time", "query_time", "wait_time", "client_parse_count", "server_parse_count",
		"bind_count", "client_login_count",
	}
	// SHOW STATS's names for the same figures.
	statsTotalColumns = []string{
		"total_server_assignment_count", "total_xact_count", "total_query_count", "total_received", "total_sent",
		"total_xact_time", "total_query_time", "total_wait_time", "total_client_parse_count", "total_server_parse_count",
		"total_bind_count", "total_client_login_count",
	}
	statsAverageColumns = []string{
		"avg_server_assignment_count", "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent",
		"avg_xact_time", "avg_query_time", "avg_wait_time", "avg_client_parse_count", "avg_server_parse_count",
		"avg_bind_count", "avg_client_login_count",
	}
	// SHOW STATS_AVERAGES's, as PgBouncer names them.
	averagesColumns = []string{
		"server_assignment_count", "xact_count", "query_count", "bytes_received", "bytes_sent",
		"xact_time", "query_time", "wait_time", "avg_client_parse_count", "avg_server_parse_count",
		"avg_bind_count", "avg_client_login_count",
	}
)

func (c *Console) showStats(kind statsKind) *resultSet {
	cur := c.currentTotals()
	avg := c.averages(time.Now(), cur)
	rs := &resultSet{cols: []column{text("database")}}
	var names []string
	switch kind {
	case statsAll:
		names = append(append(names, statsTotalColumns...), statsAverageColumns...)
	case statsTotals:
		names = totalColumns
	case statsAverages:
		names = averagesColumns
	}
	for _, n := range names {
		rs.cols = append(rs.cols, numeric(n))
	}
	dbs := make([]string, 0, len(cur))
	for name := range cur {
		dbs = append(dbs, name)
	}
	sort.Strings(dbs)
	for _, name := range dbs {
		row := []any{name}
		if kind != statsAverages {
			for _, v := range cur[name].fields() {
				row = append(row, v)
			}
		}
		if kind != statsTotals {
			for _, v := range avg[name].fields() {
				row = append(row, v)
			}
		}
		rs.add(row...)
	}
	return rs
}

// showTotals is SHOW TOTALS: every database added together, one figure a
// row.
func (c *Console) showTotals() *resultSet {
	cur := c.currentTotals()
	var sum totals
	for _, t := range cur {
		sum = sum.plus(t)
	}
	var avg totals
	if older, newer := c.samplesAt(time.Now(), cur); !older.at.IsZero() {
		var o, n totals
		for _, t := range older.byName {
			o = o.plus(t)
		}
		for _, t := range newer.byName {
			n = n.plus(t)
		}
		avg = averageOf(o, n, newer.at.Sub(older.at).Seconds())
	}
	rs := &resultSet{cols: []column{text("name"), numeric("value")}}
	names := []string{"server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes",
		"xact_time", "query_time", "wait_time", "ps_client_parse_count", "ps_server_parse_count", "ps_bind_count", "client_login_count"}
	tf, af := sum.fields(), avg.fields()
	for i, n := range names {
		rs.add("total_"+n, tf[i])
	}
	for i, n := range names {
		rs.add("avg_"+n, af[i])
	}
	return rs
}

func fromFields(f [12]uint64) totals {
	return totals{f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11]}
}
