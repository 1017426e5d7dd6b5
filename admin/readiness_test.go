package admin

import (
	"context"
	"errors"
	"testing"

	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/token"
)

type noPools struct{}

func (noPools) Stats() []pool.Stats           { return nil }
func (noPools) Resize(_, _ string, _ int) int { return 0 }
func (noPools) Pause()                        {}
func (noPools) Resume()                       {}
func (noPools) Paused() bool                  { return false }
func (noPools) Drain() int                    { return 0 }

type failingTokens struct{ provider string }

func (f failingTokens) Status() []token.Status {
	return []token.Status{{User: "app", ConsecutiveFailures: 2, LastError: "backend token provider failed: gcp: no credentials"}}
}
func (f failingTokens) Provider() string { return f.provider }

// TestReadinessNamesTheProvider: /readyz's public reason names a built-in
// provider that fails, not a command the operator never set.
func TestReadinessNamesTheProvider(t *testing.T) {
	probe := func(context.Context) error { return nil }
	for provider, want := range map[string]string{
		"command": "the token command is failing",
		"gcp":     "the token provider gcp is failing",
	} {
		err := Readiness(noPools{}, probe, failingTokens{provider})(context.Background())
		var nr *NotReady
		if !errors.As(err, &nr) || nr.Public != want {
			t.Errorf("%s: %v, want %q", provider, err, want)
		}
	}
}
