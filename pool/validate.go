package pool

import (
	"errors"
	"fmt"

	"github.com/querycop/querycop/internal/confcheck"
)

// Product-stable variable names, used in full in every problem.
const (
	envSize            = "GATEKEEPER_POOL_SIZE"
	envMinIdle         = "GATEKEEPER_POOL_MIN_IDLE"
	envMaxConnLifetime = "GATEKEEPER_POOL_MAX_CONN_LIFETIME"
	envLifetimeJitter  = "GATEKEEPER_POOL_LIFETIME_JITTER"
	envMaxConnIdleTime = "GATEKEEPER_POOL_MAX_CONN_IDLE_TIME"
	envAcquireTimeout  = "GATEKEEPER_POOL_ACQUIRE_TIMEOUT"
	envResetQuery      = "GATEKEEPER_POOL_RESET_QUERY"
	envAuthCacheTTL    = "GATEKEEPER_POOL_AUTH_CACHE_TTL"
	envMaxPools        = "GATEKEEPER_MAX_POOLS"
)

// Validate reports every problem with c at once, each naming its variable
// and the fix.
func (c Config) Validate() error {
	var problems []error
	add := func(msg string, vars ...string) { problems = append(problems, confcheck.New(msg, vars...)) }
	if c.Size < 1 {
		add(fmt.Sprintf("%s=%d must be at least 1", envSize, c.Size), envSize)
	}
	if c.MinIdle < 0 || c.MinIdle > c.Size {
		add(fmt.Sprintf("%s=%d must be between 0 and %s (%d)", envMinIdle, c.MinIdle, envSize, c.Size), envMinIdle, envSize)
	}
	if c.MaxConnLifetime <= 0 {
		add(fmt.Sprintf("%s=%s must be positive; use a duration such as 50m", envMaxConnLifetime, c.MaxConnLifetime), envMaxConnLifetime)
	}
	if j := c.LifetimeJitter; j != nil && (*j < 0 || *j >= c.MaxConnLifetime) {
		add(fmt.Sprintf("%s=%s must be at least 0 and below %s (%s)", envLifetimeJitter, *j, envMaxConnLifetime, c.MaxConnLifetime),
			envLifetimeJitter, envMaxConnLifetime)
	}
	if c.MaxConnIdleTime <= 0 {
		add(fmt.Sprintf("%s=%s must be positive; use a duration such as 10m", envMaxConnIdleTime, c.MaxConnIdleTime), envMaxConnIdleTime)
	}
	if c.AcquireTimeout <= 0 {
		add(fmt.Sprintf("%s=%s must be positive; use a duration such as 30s", envAcquireTimeout, c.AcquireTimeout), envAcquireTimeout)
	}
	if c.AuthCacheTTL < 0 {
		add(fmt.Sprintf("%s=%s must not be negative; 0 checks every client's password against the server", envAuthCacheTTL, c.AuthCacheTTL), envAuthCacheTTL)
	}
	if c.MaxPools < 1 {
		add(fmt.Sprintf("%s=%d must be at least 1", envMaxPools, c.MaxPools), envMaxPools)
	}
	if c.ResetQuery == "" {
		add(envResetQuery+" is empty; leave it unset for DISCARD ALL", envResetQuery)
	}
	return errors.Join(problems...)
}
