package backend

import (
	"time"

	"github.com/querycop/querycop/token"
)

// Config describes the one PostgreSQL server Querycop fronts. Keys are read
// under GATEKEEPER_BACKEND_.
type Config struct {
	Host           string        `env:"HOST" help:"host name or address of the PostgreSQL server (required)"`
	Port           int           `env:"PORT" envDefault:"5432" help:"PostgreSQL server port"`
	TLSMode        TLSMode       `env:"TLS_MODE" envDefault:"prefer" help:"disable, allow, prefer, require, verify-ca or verify-full, as libpq's sslmode"`
	TLSCAFile      string        `env:"TLS_CA_FILE" help:"PEM bundle of CA certificates trusted for the server (required by verify-ca and verify-full)"`
	TLSServerName  string        `env:"TLS_SERVER_NAME" help:"name verify-full checks the server certificate against (default: BACKEND_HOST)"`
	ConnectTimeout time.Duration `env:"CONNECT_TIMEOUT" envDefault:"10s" help:"limit on dialling, TLS and authenticating one backend connection"`
	Token          token.Config  `envPrefix:"TOKEN_"`
}
