package admin_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/admin"
	"github.com/querycop/querycop/internal/pgtest"
)

// Bounds on what failed start-ups may leave behind, documented in
// docs/security.md ("Unauthenticated clients").
const (
	floodMetricsGrowth = 16 << 10 // bytes of /metrics
	floodPoolsGrowth   = 4 << 10  // bytes of /v1/pools
	floodLogBytes      = 64 << 10 // bytes of log
	floodHeapGrowth    = 16 << 20 // bytes of Go heap in use, after a GC
)

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestFailedStartupFlood: 1,000 start-ups with ~5 KB user and database
// names and a wrong password (pass-through mode, no auth file) create no
// pool, no metric series, no admin entry, and a bounded log: names are
// truncated to 63 bytes as PostgreSQL does, a pool exists only once the
// server accepted a credential, failed logins count toward the per-address
// limit, and refusal lines are rate-limited.
func TestFailedStartupFlood(t *testing.T) {
	c := pgtest.Require(t)
	g := startGateway(t, c, testPoolConfig(nil), admin.Config{}, adminKey)
	// A real user first, so the views are not empty to begin with.
	mustQuery(t, g.mustDial(t, pgtest.UserSCRAM, pgtest.PassSCRAM), "select 1")
	_, metricsBefore := g.call(t, "GET", "/metrics", adminKey, "")
	_, poolsBefore := g.call(t, "GET", "/v1/pools", adminKey, "")
	logBefore := len(g.log.String())
	heapBefore := heapInUse()

	codes := map[string]int{}
	deadline := time.Now().Add(2 * time.Minute)
	for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
		cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d password=wrong sslmode=disable connect_timeout=10", g.port))
		if err != nil {
			t.Fatal(err)
		}
		cfg.User = fmt.Sprintf("u%04d", i) + strings.Repeat("x", 5000)
		cfg.Database = fmt.Sprintf("d%04d", i) + strings.Repeat("y", 4800)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		conn, err := pgconn.ConnectConfig(ctx, cfg)
		cancel()
		if err == nil {
			conn.Close(context.Background())
			t.Fatalf("start-up %d with a wrong password succeeded", i)
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			codes[pgErr.Code]++
		} else {
			codes["no server error"]++
		}
	}
	t.Logf("refusals by SQLSTATE: %v", codes)
	if codes["28000"] < 900 {
		t.Errorf("only %d of 1000 refused by the per-address limit (28000): %v", codes["28000"], codes)
	}

	status, metricsAfter := g.call(t, "GET", "/metrics", adminKey, "")
	if status != 200 || strings.Contains(string(metricsAfter), "xxxxxxxx") {
		t.Errorf("/metrics = %d, or it names a refused user", status)
	}
	if grown := len(metricsAfter) - len(metricsBefore); grown > floodMetricsGrowth {
		t.Errorf("/metrics grew by %d bytes, more than %d", grown, floodMetricsGrowth)
	}
	_, poolsAfter := g.call(t, "GET", "/v1/pools", adminKey, "")
	if grown := len(poolsAfter) - len(poolsBefore); grown > floodPoolsGrowth || strings.Contains(string(poolsAfter), "u0001") {
		t.Errorf("/v1/pools grew by %d bytes (bound %d): %.300s", grown, floodPoolsGrowth, poolsAfter)
	}
	logged := g.log.String()[logBefore:]
	var infoBytes int
	for _, line := range strings.Split(logged, "\n") {
		if !strings.Contains(line, `"level":"debug"`) {
			infoBytes += len(line) + 1
		}
	}
	// At the default level, info: debug adds a line per connection.
	if infoBytes > floodLogBytes {
		t.Errorf("the log grew by %d bytes at info and above, more than %d", infoBytes, floodLogBytes)
	}
	if strings.Contains(logged, strings.Repeat("x", 100)) {
		t.Errorf("a log line carries a client's name untruncated")
	}
	if grown := int64(heapInUse()) - int64(heapBefore); grown > floodHeapGrowth {
		t.Errorf("the heap grew by %d bytes, more than %d", grown, floodHeapGrowth)
	}
}
