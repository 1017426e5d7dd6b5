package admin

// Config is the admin HTTP API. Keys are read under GATEKEEPER_, except the
// key itself, which is ADMIN_API_KEY as the cookbooks name it.
type Config struct {
	Addr string `env:"API_ADDR" envDefault:"127.0.0.1" help:"address the admin API listens on"`
	Port int    `env:"API_PORT" envDefault:"8080" help:"admin API port"`
	// MetricsPublic opens /metrics without the key, for scrapers that
	// cannot send one; everything else stays protected.
	MetricsPublic bool `env:"API_METRICS_PUBLIC" envDefault:"false" help:"serve /metrics without ADMIN_API_KEY (the other endpoints stay protected)"`
}

// KeyConfig holds the admin API key. It is read without the GATEKEEPER_
// prefix and removed from the environment, so the token command never
// inherits it.
type KeyConfig struct {
	APIKey string `env:"ADMIN_API_KEY,unset" help:"bearer key for the admin API; empty disables protected endpoints"`
}
