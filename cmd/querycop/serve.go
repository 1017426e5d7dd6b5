package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/querycop/querycop/admin"
	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/token"
	"github.com/querycop/querycop/wire"
)

// serve wires the packages together and runs until ctx is cancelled, then
// drains: /readyz turns 503, the pool port stops accepting, sessions run on
// for up to GATEKEEPER_SHUTDOWN_TIMEOUT, the rest are closed with 57P01, and
// the pools are closed.
func serve(ctx context.Context, cfg Config, log zerolog.Logger) error {
	var tokens *token.Source
	var dialer *backend.Dialer
	var err error
	if cfg.Backend.Token.TokenMode() {
		minter, err := token.NewMinter(ctx, cfg.Backend.Token)
		if err != nil {
			return err
		}
		tokens = token.NewSource(cfg.Backend.Token, minter)
		// A token is not used for a login it might not finish before the
		// token expires, by this host's clock or the server's.
		tokens.LoginSafety = cfg.Backend.ConnectTimeout + token.ClockSkew
		tokens.OnFailure = func(t token.Target, err error) {
			log.Warn().Str("user", t.User).Str("error", err.Error()).Msg("background token refresh failed")
		}
		defer tokens.Close()
		dialer, err = backend.NewDialer(cfg.Backend, tokens)
	} else {
		dialer, err = backend.NewDialer(cfg.Backend, nil)
	}
	if err != nil {
		return err
	}
	pools := pool.New(cfg.Pool, dialer, dialer.TokenMode(), log)
	defer pools.Close()
	srv, err := wire.NewServer(cfg.Wire, wire.PoolsOf(pools), dialer.TokenMode(), log, wire.WithBackendDialer(dialer))
	if err != nil {
		return err
	}
	if c := newConsole(cfg, pools, srv); c != nil {
		srv.SetConsole(c)
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	probe := func(ctx context.Context) error {
		_, err := dialer.Probe(ctx)
		return err
	}
	deps := admin.Deps{Pools: pools, Clients: srv, Config: effectiveConfig(cfg), Ready: admin.Readiness(pools, probe, nil)}
	if tokens != nil {
		deps.Tokens = tokens
		deps.Ready = admin.Readiness(pools, probe, tokens)
	}
	api := admin.NewServer(cfg.Admin, cfg.AdminKey.APIKey, deps, log)
	if err := api.Listen(); err != nil {
		srv.Close()
		return err
	}
	log.Info().
		Str("version", versionString()).
		Str("listen", srv.Addr().String()).
		Str("api", api.Addr().String()).
		Bool("client_tls", cfg.Wire.TLSCert != "").
		Str("backend", fmt.Sprintf("%s:%d", cfg.Backend.Host, cfg.Backend.Port)).
		Str("backend_tls_mode", string(cfg.Backend.TLSMode)).
		Bool("token_mode", dialer.TokenMode()).
		Str("token_provider", cfg.Backend.Token.ProviderName()).
		Int("pool_size", cfg.Pool.Size).
		Int("pool_min_idle", cfg.Pool.MinIdle).
		Str("pool_max_conn_lifetime", cfg.Pool.MaxConnLifetime.String()). // with its unit: zerolog's Dur is a bare number
		Int("max_client_conn", cfg.Wire.MaxClientConn).
		Msg("querycop started")

	if dialer.TokenMode() && cfg.Wire.ClientAuthFile == "" && cfg.Wire.AuthUser == "" && !isLoopback(cfg.Wire.ListenAddr) {
		log.Warn().Str("listen", srv.Addr().String()).
			Msg("token mode without GATEKEEPER_CLIENT_AUTH_FILE on a non-loopback address: anyone who can reach this port gets the token's database rights; restrict the network or set GATEKEEPER_CLIENT_AUTH_FILE")
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if err := srv.ReloadAuthFile(); err != nil {
				log.Warn().Err(err).Msg("SIGHUP: GATEKEEPER_CLIENT_AUTH_FILE not reloaded; keeping its previous contents")
			} else if cfg.Wire.ClientAuthFile != "" {
				log.Info().Msg("SIGHUP: GATEKEEPER_CLIENT_AUTH_FILE reloaded")
			}
			if cfg.Wire.AuthUser != "" {
				log.Info().Msg("SIGHUP: the auth query's cached answers dropped")
			}
		}
	}()

	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	apiDone := make(chan error, 1)
	go func() { apiDone <- api.Serve() }()
	select {
	case err := <-served:
		return err
	case err := <-apiDone:
		srv.Close()
		return err
	case <-ctx.Done():
	}

	api.SetDraining()
	log.Info().Str("timeout", cfg.Shutdown.Timeout.String()).Int64("clients", srv.Stats().Connected).
		Msg("shutting down: no new clients, waiting for sessions to end")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.Timeout)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	<-served
	// Every session has released its backend by now, unless Shutdown gave
	// up on one: closing the pools then must not wait for it forever.
	closed := make(chan struct{})
	go func() { pools.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		log.Warn().Msg("shutdown: backend connections still in use after 5s; exiting without waiting for them")
	}
	apiCtx, apiCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer apiCancel()
	_ = api.Shutdown(apiCtx)
	<-apiDone
	log.Info().Msg("querycop stopped")
	return err
}

// isLoopback reports whether addr only accepts connections from this host.
func isLoopback(addr string) bool {
	if addr == "localhost" {
		return true
	}
	ip := net.ParseIP(addr)
	return ip != nil && ip.IsLoopback()
}
