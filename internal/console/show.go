package console

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/wire"
)

// Column types, as PgBouncer describes them.
const (
	oidText    = 25
	oidInt4    = 23
	oidInt8    = 20
	oidNumeric = 1700
)

type column struct {
	name string
	oid  uint32
}

func text(name string) column    { return column{name, oidText} }
func int4(name string) column    { return column{name, oidInt4} }
func numeric(name string) column { return column{name, oidNumeric} }

// null is a NULL cell.
type null struct{}

// resultSet is one SHOW answer.
type resultSet struct {
	cols []column
	rows [][]any // string, int, int64, uint64, or null
}

func (rs *resultSet) add(cells ...any) {
	if len(cells) != len(rs.cols) {
		panic(fmt.Sprintf("console: %d cells for %d columns", len(cells), len(rs.cols)))
	}
	rs.rows = append(rs.rows, cells)
}

func (rs *resultSet) write(out *writer, tag string) {
	desc := &pgproto3.RowDescription{}
	for _, c := range rs.cols {
		size := int16(-1)
		switch c.oid {
		case oidInt4:
			size = 4
		case oidInt8:
			size = 8
		}
		desc.Fields = append(desc.Fields, pgproto3.FieldDescription{
			Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: size, TypeModifier: -1, Format: 0,
		})
	}
	out.send(desc)
	for _, row := range rs.rows {
		values := make([][]byte, len(row))
		for i, v := range row {
			switch v := v.(type) {
			case null:
				values[i] = nil
			case string:
				values[i] = []byte(v)
			case int:
				values[i] = strconv.AppendInt(nil, int64(v), 10)
			case int64:
				values[i] = strconv.AppendInt(nil, v, 10)
			case uint64:
				values[i] = strconv.AppendUint(nil, v, 10)
			default:
				panic(fmt.Sprintf("console: cell of type %T", v))
			}
		}
		out.send(&pgproto3.DataRow{Values: values})
	}
	out.send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
}

// query runs one console command. Like PgBouncer's console it takes one
// command per query, case-insensitive, with an optional trailing
// semicolon.
func (c *Console) query(out *writer, q, user string, log zerolog.Logger) {
	q = strings.TrimSpace(q)
	q = strings.TrimSpace(strings.TrimSuffix(q, ";"))
	if q == "" {
		out.send(&pgproto3.EmptyQueryResponse{})
		return
	}
	words := strings.Fields(q)
	cmd := strings.ToUpper(words[0])
	args := words[1:]
	if strings.ContainsAny(q, ";") {
		out.send(errorResponse("ERROR", codeSyntaxError, "the admin console runs one command per query; send them one at a time"))
		return
	}
	switch cmd {
	case "SHOW":
		if len(args) != 1 {
			out.send(errorResponse("ERROR", codeSyntaxError, "usage: SHOW <what>; SHOW HELP lists what can be shown"))
			return
		}
		c.show(out, strings.ToUpper(args[0]))
	case "PAUSE":
		if len(args) > 0 {
			out.send(errorResponse("ERROR", codeFeatureNotSupported, "PAUSE of one database is not supported: Querycop pauses every pool at once; use PAUSE without a database"))
			return
		}
		if c.deps.Pools.Paused() {
			out.send(errorResponse("ERROR", codeObjectInState, "already suspended/paused"))
			return
		}
		c.deps.Pools.Pause()
		log.Info().Msg("pools paused through the admin console")
		out.send(&pgproto3.CommandComplete{CommandTag: []byte("PAUSE")})
	case "RESUME":
		if len(args) > 0 {
			out.send(errorResponse("ERROR", codeFeatureNotSupported, "RESUME of one database is not supported: Querycop resumes every pool at once; use RESUME without a database"))
			return
		}
		if !c.deps.Pools.Paused() {
			out.send(errorResponse("ERROR", codeObjectInState, "pooler is not paused/suspended"))
			return
		}
		c.deps.Pools.Resume()
		log.Info().Msg("pools resumed through the admin console")
		out.send(&pgproto3.CommandComplete{CommandTag: []byte("RESUME")})
	case "RELOAD":
		if len(args) > 0 {
			out.send(errorResponse("ERROR", codeSyntaxError, "usage: RELOAD"))
			return
		}
		if c.deps.Reload != nil {
			if err := c.deps.Reload(); err != nil {
				log.Warn().Err(err).Msg("RELOAD through the admin console failed; keeping the previous GATEKEEPER_CLIENT_AUTH_FILE")
				out.send(errorResponse("ERROR", codeConfigFileError, "RELOAD failed, the previous contents stay in force: "+err.Error()))
				return
			}
		}
		log.Info().Msg("RELOAD through the admin console")
		out.send(&pgproto3.CommandComplete{CommandTag: []byte("RELOAD")})
	case "SET", "KILL", "KILL_CLIENT", "SUSPEND", "SHUTDOWN", "RECONNECT", "DISABLE", "ENABLE", "WAIT_CLOSE", "UPGRADE":
		out.send(errorResponse("ERROR", codeFeatureNotSupported, fmt.Sprintf(
			"%s is not supported by Querycop's admin console, which is read-mostly: SHOW HELP lists what is; the admin API (docs/operations.md) resizes, drains and pauses", cmd)))
	default:
		out.send(errorResponse("ERROR", codeSyntaxError, fmt.Sprintf("invalid command %q, use SHOW HELP;", words[0])))
	}
}

func (c *Console) show(out *writer, what string) {
	var rs *resultSet
	switch what {
	case "HELP":
		out.send(&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000",
			Message: "Console usage",
			Detail: "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n" +
				"\tSHOW LISTS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n" +
				"\tRELOAD\n\tPAUSE\n\tRESUME"})
		out.send(&pgproto3.CommandComplete{CommandTag: []byte("SHOW")})
		return
	case "VERSION":
		rs = &resultSet{cols: []column{text("version")}}
		rs.add("Querycop " + c.deps.Version)
	case "POOLS":
		rs = c.showPools()
	case "DATABASES":
		rs = c.showDatabases()
	case "USERS":
		rs = c.showUsers()
	case "CLIENTS":
		rs = c.showClients()
	case "SERVERS":
		rs = c.showServers()
	case "LISTS":
		rs = c.showLists()
	case "CONFIG":
		rs = c.showConfig()
	case "STATS":
		rs = c.showStats(statsAll)
	case "STATS_TOTALS":
		rs = c.showStats(statsTotals)
	case "STATS_AVERAGES":
		rs = c.showStats(statsAverages)
	case "TOTALS":
		rs = c.showTotals()
	default:
		out.send(errorResponse("ERROR", codeUndefinedObject, fmt.Sprintf("unknown SHOW %s; SHOW HELP lists what Querycop's admin console can show", strings.ToLower(what))))
		return
	}
	rs.write(out, "SHOW")
}

// consoleDB is the console's own row in SHOW DATABASES and SHOW POOLS, as
// PgBouncer lists its pgbouncer database.
const consoleDB = "pgbouncer"

func (c *Console) showPools() *resultSet {
	rs := &resultSet{cols: []column{
		text("database"), text("user"),
		int4("cl_active"), int4("cl_waiting"), int4("cl_active_cancel_req"), int4("cl_waiting_cancel_req"),
		int4("sv_active"), int4("sv_active_cancel"), int4("sv_being_canceled"), int4("sv_idle"),
		int4("sv_used"), int4("sv_tested"), int4("sv_login"),
		int4("maxwait"), int4("maxwait_us"), text("pool_mode"), text("load_balance_hosts"),
	}}
	for _, s := range c.deps.Pools.Stats() {
		rs.add(s.Database, s.User,
			int(s.Clients-s.Waiting), int(s.Waiting), 0, 0,
			s.InUse, 0, 0, s.Idle,
			0, 0, s.Constructing,
			int(s.OldestWait/time.Second), int(s.OldestWait%time.Second/time.Microsecond), c.deps.PoolMode, null{})
	}
	return rs
}

// byDatabase groups pool figures per database, sorted by name.
type dbFigures struct {
	name                     string
	size, conns, clients     int
	assignments              int64
	waitMicros               int64
	users                    map[string]bool
	relay                    wire.Stats
	xactCount, xactMicros    int64
	queryCount               int64
	clientParse, serverParse int64
}

func (c *Console) figures() []*dbFigures {
	byName := map[string]*dbFigures{}
	get := func(db string) *dbFigures {
		f := byName[db]
		if f == nil {
			f = &dbFigures{name: db, users: map[string]bool{}}
			byName[db] = f
		}
		return f
	}
	for _, s := range c.deps.Pools.Stats() {
		f := get(s.Database)
		f.size = max(f.size, s.Size)
		f.conns += s.Total
		f.clients += int(s.Clients)
		f.assignments += s.Acquires
		f.waitMicros += s.AcquireWait.Microseconds()
		f.users[s.User] = true
	}
	for db, st := range c.deps.Clients.StatsByDatabase() {
		if c.IsConsole(db) {
			continue
		}
		f := get(db)
		f.relay = st
		f.xactCount = st.Transactions
		f.xactMicros = st.BackendHeld.Microseconds()
		f.queryCount = st.Queries
		f.clientParse = st.PreparedStatementHits + st.PreparedStatementMisses
		f.serverParse = st.PreparedStatementMisses
	}
	out := make([]*dbFigures, 0, len(byName))
	for _, f := range byName {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (c *Console) showDatabases() *resultSet {
	rs := &resultSet{cols: []column{
		text("name"), text("host"), int4("port"), text("database"), text("force_user"),
		int4("pool_size"), int4("min_pool_size"), int4("reserve_pool_size"), int4("server_lifetime"),
		text("pool_mode"), text("load_balance_hosts"), int4("max_connections"), int4("current_connections"),
		int4("max_client_connections"), int4("current_client_connections"), int4("paused"), int4("disabled"),
	}}
	paused := 0
	if c.deps.Pools.Paused() {
		paused = 1
	}
	consoleClients := 0
	for _, ci := range c.deps.Clients.Clients() {
		if c.IsConsole(ci.Database) {
			consoleClients++
		}
	}
	rs.add(consoleDB, null{}, c.deps.ListenPort, consoleDB, consoleDB, 2, 0, 0, 0, "statement", null{}, 0, 0, 0, consoleClients, 0, 0)
	for _, f := range c.figures() {
		size := f.size
		if size == 0 {
			size = c.deps.PoolSize
		}
		rs.add(f.name, c.deps.BackendHost, c.deps.BackendPort, f.name, null{},
			size, c.deps.MinPoolSize, 0, int(c.deps.ServerLifetime/time.Second),
			c.deps.PoolMode, null{}, 0, f.conns, 0, f.clients, paused, 0)
	}
	return rs
}

func (c *Console) showUsers() *resultSet {
	rs := &resultSet{cols: []column{
		text("name"), text("pool_size"), text("reserve_pool_size"), text("pool_mode"),
		int4("max_user_connections"), int4("current_connections"),
		int4("max_user_client_connections"), int4("current_client_connections"),
	}}
	type userFigures struct{ conns, clients int }
	byUser := map[string]*userFigures{}
	for _, s := range c.deps.Pools.Stats() {
		u := byUser[s.User]
		if u == nil {
			u = &userFigures{}
			byUser[s.User] = u
		}
		u.conns += s.Total
		u.clients += int(s.Clients)
	}
	names := make([]string, 0, len(byUser))
	for n := range byUser {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rs.add(n, "", "", null{}, 0, byUser[n].conns, 0, byUser[n].clients)
	}
	return rs
}

// socketColumns are SHOW CLIENTS's and SHOW SERVERS's.
func socketColumns() []column {
	return []column{
		text("type"), text("user"), text("database"), text("replication"), text("state"),
		text("addr"), int4("port"), text("local_addr"), int4("local_port"),
		text("connect_time"), text("request_time"),
		int4("wait"), int4("wait_us"), int4("close_needed"),
		text("ptr"), text("link"), int4("remote_pid"), text("tls"),
		text("application_name"), int4("prepared_statements"), int4("id"),
	}
}

// pgbouncerTime formats a time as PgBouncer does, in UTC.
func pgbouncerTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05") + " UTC" }

func splitAddr(addr string) (string, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

func clientPtr(id uint64) string  { return fmt.Sprintf("c%x", id) }
func serverPtr(pid uint32) string { return fmt.Sprintf("s%x", pid) }

func (c *Console) showClients() *resultSet {
	rs := &resultSet{cols: socketColumns()}
	for _, ci := range c.deps.Clients.Clients() {
		if ci.User == "" || ci.State == "login" {
			continue // still starting up: PgBouncer lists no login clients either
		}
		state, link := "idle", ""
		if ci.BackendPID != 0 {
			state, link = "active", serverPtr(ci.BackendPID)
		}
		host, port := splitAddr(ci.Address)
		tls := ""
		if ci.TLS {
			tls = "TLS"
		}
		connected := pgbouncerTime(ci.ConnectedSince)
		rs.add("C", ci.User, ci.Database, "none", state,
			host, port, null{}, null{},
			connected, connected,
			0, 0, 0,
			clientPtr(ci.ID), link, 0, tls,
			"", 0, int(ci.ID))
	}
	return rs
}

// showServers lists the backend connections clients are using; idle ones
// are counted in SHOW POOLS but not listed.
func (c *Console) showServers() *resultSet {
	rs := &resultSet{cols: socketColumns()}
	for _, ci := range c.deps.Clients.Clients() {
		if ci.BackendPID == 0 {
			continue
		}
		connected := pgbouncerTime(ci.ConnectedSince)
		rs.add("S", ci.User, ci.Database, "none", "active",
			c.deps.BackendHost, c.deps.BackendPort, null{}, null{},
			connected, connected,
			0, 0, 0,
			serverPtr(ci.BackendPID), clientPtr(ci.ID), int(ci.BackendPID), "",
			"", 0, int(ci.BackendPID))
	}
	return rs
}

func (c *Console) showLists() *resultSet {
	rs := &resultSet{cols: []column{text("list"), int4("items")}}
	stats := c.deps.Pools.Stats()
	dbs, users := map[string]bool{}, map[string]bool{}
	servers := 0
	for _, s := range stats {
		dbs[s.Database] = true
		users[s.User] = true
		servers += s.Total
	}
	used, login := 0, 0
	for _, ci := range c.deps.Clients.Clients() {
		if ci.State == "login" {
			login++
		} else {
			used++
		}
	}
	for _, l := range []struct {
		name string
		n    int
	}{
		{"databases", len(dbs)}, {"users", len(users)}, {"peers", 0}, {"pools", len(stats)}, {"peer_pools", 0},
		{"free_clients", 0}, {"used_clients", used}, {"login_clients", login},
		{"free_servers", 0}, {"used_servers", servers},
		{"dns_names", 0}, {"dns_zones", 0}, {"dns_queries", 0}, {"dns_pending", 0},
	} {
		rs.add(l.name, l.n)
	}
	return rs
}

func (c *Console) showConfig() *resultSet {
	rs := &resultSet{cols: []column{text("key"), text("value"), text("default"), text("changeable")}}
	for _, s := range c.deps.Settings {
		ch := "no"
		if s.Changeable {
			ch = "yes"
		}
		rs.add(s.Key, s.Value, s.Default, ch)
	}
	return rs
}
