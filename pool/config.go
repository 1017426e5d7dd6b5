package pool

import "time"

// Config sizes and paces the pools. Keys are read under GATEKEEPER_.
type Config struct {
	Size            int            `env:"POOL_SIZE" envDefault:"20" help:"most backend connections per pool (one pool per database, user and credential)"`
	MinIdle         int            `env:"POOL_MIN_IDLE" envDefault:"0" help:"idle connections each pool keeps ready once it exists"`
	MaxConnLifetime time.Duration  `env:"POOL_MAX_CONN_LIFETIME" envDefault:"50m" help:"age at which a pooled connection is retired and replaced (when idle, or when its session ends)"`
	LifetimeJitter  *time.Duration `env:"POOL_LIFETIME_JITTER" help:"up to this much is taken off each connection's lifetime at random, so a pool does not retire all at once (default: 10% of the lifetime)"`
	MaxConnIdleTime time.Duration  `env:"POOL_MAX_CONN_IDLE_TIME" envDefault:"10m" help:"idle time after which a pooled connection is closed (never below POOL_MIN_IDLE)"`
	AcquireTimeout  time.Duration  `env:"POOL_ACQUIRE_TIMEOUT" envDefault:"30s" help:"how long a client waits for a backend connection when its pool is full, before SQLSTATE 53300"`
	ResetQuery      string         `env:"POOL_RESET_QUERY" envDefault:"DISCARD ALL" help:"run on a backend connection when a session ends, before it is reused"`
	MaxPools        int            `env:"MAX_POOLS" envDefault:"1000" help:"most pools at once (one per database, user and credential); a client that would need one more is refused with SQLSTATE 53300"`
	AuthCacheTTL    time.Duration  `env:"POOL_AUTH_CACHE_TTL" envDefault:"5m" help:"pass-through mode: how long a verified client password admits clients without a new backend authentication"`
}

// jitter is the configured jitter, or 10% of the lifetime when unset.
func (c Config) jitter() time.Duration {
	if c.LifetimeJitter != nil {
		return *c.LifetimeJitter
	}
	return c.MaxConnLifetime / 10
}
