package pool

import (
	"errors"
	"fmt"

	"github.com/querycop/querycop/internal/confcheck"
)

// Variable names, from the env tags the configuration is read with, used
// in full in every problem.
var (
	envSize            = confcheck.Var(Config{}, "GATEKEEPER_", "Size")
	envMinIdle         = confcheck.Var(Config{}, "GATEKEEPER_", "MinIdle")
	envMaxConnLifetime = confcheck.Var(Config{}, "GATEKEEPER_", "MaxConnLifetime")
	envLifetimeJitter  = confcheck.Var(Config{}, "GATEKEEPER_", "LifetimeJitter")
	envMaxConnIdleTime = confcheck.Var(Config{}, "GATEKEEPER_", "MaxConnIdleTime")
	envAcquireTimeout  = confcheck.Var(Config{}, "GATEKEEPER_", "AcquireTimeout")
	envResetQuery      = confcheck.Var(Config{}, "GATEKEEPER_", "ResetQuery")
	envAuthCacheTTL    = confcheck.Var(Config{}, "GATEKEEPER_", "AuthCacheTTL")
	envMaxPools        = confcheck.Var(Config{}, "GATEKEEPER_", "MaxPools")
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
