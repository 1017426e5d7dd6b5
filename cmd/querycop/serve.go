package main

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/querycop/querycop/backend"
	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/token"
	"github.com/querycop/querycop/wire"
)

// shutdownGrace is how long running sessions may go on after SIGTERM.
const shutdownGrace = 30 * time.Second

// serve wires the packages together and runs until ctx is cancelled.
func serve(ctx context.Context, cfg Config, log zerolog.Logger) error {
	var dialer *backend.Dialer
	var err error
	if cfg.Backend.Token.Cmd != "" {
		tokens := token.NewSource(cfg.Backend.Token, token.NewCommand(cfg.Backend.Token))
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
	srv, err := wire.NewServer(cfg.Wire, pools, dialer.TokenMode(), log)
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	log.Info().
		Str("version", version).
		Str("listen", srv.Addr().String()).
		Bool("client_tls", cfg.Wire.TLSCert != "").
		Str("backend", fmt.Sprintf("%s:%d", cfg.Backend.Host, cfg.Backend.Port)).
		Str("backend_tls_mode", string(cfg.Backend.TLSMode)).
		Bool("token_mode", dialer.TokenMode()).
		Int("pool_size", cfg.Pool.Size).
		Int("pool_min_idle", cfg.Pool.MinIdle).
		Dur("pool_max_conn_lifetime", cfg.Pool.MaxConnLifetime).
		Int("max_client_conn", cfg.Wire.MaxClientConn).
		Msg("querycop started")

	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info().Dur("grace", shutdownGrace).Msg("shutting down: no new clients, waiting for sessions")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err = srv.Shutdown(shutdownCtx)
	<-served
	log.Info().Msg("querycop stopped")
	return err
}
