package admin

import (
	"context"
	"errors"
)

// Readiness builds /readyz's check. A live pooled connection means the
// gateway can serve; otherwise probe (a dial, with TLS, without
// authenticating) must succeed now, and in token mode (tokens not nil) the
// token command must not be failing for every user it serves.
func Readiness(pools Pools, probe func(context.Context) error, tokens Tokens) func(context.Context) error {
	return func(ctx context.Context) error {
		for _, s := range pools.Stats() {
			if s.Idle+s.InUse > 0 {
				return nil
			}
		}
		if err := probe(ctx); err != nil {
			return &NotReady{Public: "the backend does not accept connections", Err: err}
		}
		if tokens == nil {
			return nil
		}
		var lastErr string
		for _, st := range tokens.Status() {
			if st.Valid || st.ConsecutiveFailures == 0 {
				return nil
			}
			lastErr = st.LastError
		}
		if lastErr != "" {
			public := "the token command is failing"
			if p, ok := tokens.(interface{ Provider() string }); ok && p.Provider() != "command" {
				// Name what is failing, not a command the operator never set.
				public = "the token provider " + p.Provider() + " is failing"
			}
			return &NotReady{Public: public, Err: errors.New(lastErr)}
		}
		return nil
	}
}
