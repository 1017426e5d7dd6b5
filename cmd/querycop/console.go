package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/querycop/querycop/internal/confcheck"
	"github.com/querycop/querycop/internal/console"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/wire"
)

// newConsole builds the admin console (nil when GATEKEEPER_ADMIN_USERS is
// empty) over the pools and the client side.
func newConsole(cfg Config, pools *pool.Pools, srv *wire.Server) *console.Console {
	if !cfg.Console.Enabled() {
		return nil
	}
	return console.New(cfg.Console, console.Deps{
		Pools:          pools,
		Clients:        srv,
		Reload:         srv.ReloadAuthFile,
		Settings:       consoleSettings(cfg),
		Version:        versionString(),
		PoolMode:       string(cfg.Wire.PoolMode),
		BackendHost:    cfg.Backend.Host,
		BackendPort:    cfg.Backend.Port,
		ListenPort:     cfg.Wire.ListenPort,
		PoolSize:       cfg.Pool.Size,
		MinPoolSize:    cfg.Pool.MinIdle,
		ServerLifetime: cfg.Pool.MaxConnLifetime,
		MaxClientConn:  cfg.Wire.MaxClientConn,
	})
}

// consoleSettings are SHOW CONFIG's rows: first PgBouncer's names for the
// settings Querycop has an equivalent of (monitoring tools read some, such
// as max_client_conn), in PgBouncer's units (seconds, counts); then every
// Querycop variable under its own name, secrets redacted as in /v1/config.
// Nothing can be changed from the console: configuration is the
// environment.
func consoleSettings(cfg Config) []console.Setting {
	defaults := map[string]string{}
	for _, v := range envVars() {
		defaults[v.Name] = v.Default
	}
	secs := func(d time.Duration) string { return strconv.Itoa(int(d / time.Second)) }
	secsDefault := func(name string) string {
		d, err := time.ParseDuration(defaults[name])
		if err != nil {
			return ""
		}
		return secs(d)
	}
	var out []console.Setting
	pgb := func(key, value, def string) {
		out = append(out, console.Setting{Key: key, Value: value, Default: def})
	}
	pgb("listen_addr", cfg.Wire.ListenAddr, defaults["GATEKEEPER_LISTEN_ADDR"])
	pgb("listen_port", strconv.Itoa(cfg.Wire.ListenPort), defaults["GATEKEEPER_LISTEN_PORT"])
	pgb("pool_mode", string(cfg.Wire.PoolMode), defaults["GATEKEEPER_POOL_MODE"])
	pgb("default_pool_size", strconv.Itoa(cfg.Pool.Size), defaults["GATEKEEPER_POOL_SIZE"])
	pgb("min_pool_size", strconv.Itoa(cfg.Pool.MinIdle), defaults["GATEKEEPER_POOL_MIN_IDLE"])
	pgb("reserve_pool_size", "0", "0")
	pgb("max_client_conn", strconv.Itoa(cfg.Wire.MaxClientConn), defaults["GATEKEEPER_MAX_CLIENT_CONN"])
	pgb("max_db_connections", "0", "0")
	pgb("max_user_connections", "0", "0")
	pgb("server_lifetime", secs(cfg.Pool.MaxConnLifetime), secsDefault("GATEKEEPER_POOL_MAX_CONN_LIFETIME"))
	pgb("server_idle_timeout", secs(cfg.Pool.MaxConnIdleTime), secsDefault("GATEKEEPER_POOL_MAX_CONN_IDLE_TIME"))
	pgb("server_connect_timeout", secs(cfg.Backend.ConnectTimeout), secsDefault("GATEKEEPER_BACKEND_CONNECT_TIMEOUT"))
	pgb("server_reset_query", cfg.Pool.ResetQuery, defaults["GATEKEEPER_POOL_RESET_QUERY"])
	pgb("query_wait_timeout", secs(cfg.Pool.AcquireTimeout), secsDefault("GATEKEEPER_POOL_ACQUIRE_TIMEOUT"))
	pgb("client_login_timeout", secs(cfg.Wire.LoginTimeout), secsDefault("GATEKEEPER_CLIENT_LOGIN_TIMEOUT"))
	pgb("client_idle_timeout", secs(cfg.Wire.ClientIdleTimeout), secsDefault("GATEKEEPER_CLIENT_IDLE_TIMEOUT"))
	pgb("idle_transaction_timeout", secs(cfg.Wire.IdleInTransactionTimeout), secsDefault("GATEKEEPER_IDLE_IN_TRANSACTION_TIMEOUT"))
	pgb("max_packet_size", strconv.Itoa(cfg.Wire.MaxMessageSize), defaults["GATEKEEPER_MAX_MESSAGE_SIZE"])
	pgb("max_prepared_statements", strconv.Itoa(cfg.Wire.MaxPreparedStatements), defaults["GATEKEEPER_MAX_PREPARED_STATEMENTS"])
	pgb("auth_file", cfg.Wire.ClientAuthFile, "")
	pgb("admin_users", strings.Join(cfg.Console.AdminUsers, ","), "")
	pgb("server_tls_sslmode", string(cfg.Backend.TLSMode), defaults["GATEKEEPER_BACKEND_TLS_MODE"])
	pgb("server_tls_ca_file", cfg.Backend.TLSCAFile, "")
	pgb("client_tls_sslmode", string(cfg.Wire.ClientTLS), defaults["GATEKEEPER_CLIENT_TLS"])
	pgb("client_tls_cert_file", cfg.Wire.TLSCert, "")
	pgb("client_tls_key_file", cfg.Wire.TLSKey, "")
	pgb("client_tls_ca_file", cfg.Wire.TLSClientCA, "")

	effective := effectiveConfig(cfg)
	names := make([]string, 0, len(effective))
	for name := range effective {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		pgb(name, effective[name], defaults[name])
	}
	return out
}

// consoleModeCheck refuses the console in token mode with nothing to check
// client passwords against (no client auth file, no auth query): token mode
// asks clients for none, so anyone could claim an admin user's name.
func consoleModeCheck(cfg Config) error {
	if !cfg.Console.Enabled() || !cfg.Backend.Token.TokenMode() || cfg.Wire.ClientAuthFile != "" || cfg.Wire.AuthUser != "" {
		return nil
	}
	return confcheck.Problem{Vars: []string{envPrefix + "ADMIN_USERS"}, Msg: fmt.Sprintf(
		"%sADMIN_USERS is set in token mode without %sCLIENT_AUTH_FILE or %sAUTH_USER: token mode does not check client passwords, so anyone could open the admin console; list the admin users in a client auth file, or unset %sADMIN_USERS",
		envPrefix, envPrefix, envPrefix, envPrefix)}
}
