package wire_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/internal/pgtest"
)

// connectWith connects to port with extra start-up parameters and returns
// the server's error at connect ("" when the connection was made; then it
// also checks the connection answers a query).
func connectWith(t *testing.T, port int, params map[string]string) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		port, pgtest.UserSCRAM, pgtest.PassSCRAM, pgtest.Database))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Fatalf("port %d, %v: %v, want a server error or a connection", port, params, err)
		}
		return pgErr.Severity + " " + pgErr.Code + " " + pgErr.Message
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Errorf("port %d, %v: connected, but the first query failed: %v", port, params, err)
	}
	return ""
}

// Start-up parameters the server refuses fail the connection at connect,
// with PostgreSQL's own error and SQLSTATE, in both pool modes; those it
// accepts (placeholder names with a dot among them) connect.
func TestStartupParametersCheckedAtConnect(t *testing.T) {
	c := pgtest.Require(t)
	cases := []map[string]string{
		{"DOESNOTEXIST": "foo"},
		{"doesnotexist": "foo"},
		{"options": "-c nosuch=1"},
		{"work_mem": "banana"},
		{"options": "-c work_mem=banana"},
		{"lc_messages": "xx_XX"},
		{"application_name": "fine", "work_mem": "64kB"},
		{"myapp.flag": "on"},
		{"options": "-c myapp.other=1 -c statement_timeout=5s"},
	}
	var direct []string
	for _, params := range cases {
		direct = append(direct, connectWith(t, c.Port, params))
	}
	if direct[0] == "" || direct[len(direct)-1] != "" {
		t.Fatalf("PostgreSQL itself answered %q; the cases no longer test what they should", direct)
	}
	for _, mode := range fltModes {
		t.Run(string(mode), func(t *testing.T) {
			g := startGateway(t, backendConfig(c, backend.TLSDisable), fltMode(mode))
			for round := range 2 { // the second time from the cache of settings that passed
				for i, params := range cases {
					if got := connectWith(t, g.port, params); got != direct[i] {
						t.Errorf("round %d, %v: gateway %q, PostgreSQL %q", round, params, got, direct[i])
					}
				}
			}
		})
	}
}
