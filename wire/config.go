package wire

import (
	"time"

	"github.com/querycop/querycop/internal/confcheck"
)

// Config is the client-facing listener. Keys are read under GATEKEEPER_.
type Config struct {
	ListenAddr    string        `env:"LISTEN_ADDR" envDefault:"127.0.0.1" help:"address the pool port listens on (0.0.0.0 for every interface)"`
	ListenPort    int           `env:"LISTEN_PORT" envDefault:"15432" help:"pool port that applications connect to"`
	TLSCert       string        `env:"PROXY_TLS_CERT" help:"PEM certificate (chain) offered to clients that ask for TLS; needs PROXY_TLS_KEY"`
	TLSKey        string        `env:"PROXY_TLS_KEY" help:"PEM private key for PROXY_TLS_CERT"`
	LoginTimeout  time.Duration `env:"CLIENT_LOGIN_TIMEOUT" envDefault:"15s" help:"time a client has to finish start-up and authentication"`
	MaxClientConn int           `env:"MAX_CLIENT_CONN" envDefault:"1000" help:"most clients connected at once; more are refused with SQLSTATE 53300"`
	// ClientAuthFile makes the gateway authenticate clients itself.
	ClientAuthFile           string        `env:"CLIENT_AUTH_FILE" help:"PgBouncer-style userlist (\"user\" \"SCRAM-SHA-256$...\" | \"md5...\" | \"plain\") the gateway checks clients against with SCRAM-SHA-256 or MD5; re-read when it changes"`
	ClientTLS                ClientTLS     `env:"CLIENT_TLS" envDefault:"allow" help:"allow (TLS when the client asks) or require (clients without TLS are refused)"`
	TLSClientCA              string        `env:"PROXY_TLS_CLIENT_CA" help:"PEM CA bundle: client certificates, when presented, must chain to it"`
	MaxMessageSize           int           `env:"MAX_MESSAGE_SIZE" envDefault:"268435456" help:"largest protocol message a client may send, in bytes; a bigger one is refused with SQLSTATE 08P01"`
	ClientIdleTimeout        time.Duration `env:"CLIENT_IDLE_TIMEOUT" envDefault:"0s" help:"close a client that sends nothing for this long outside a transaction (0: never)"`
	IdleInTransactionTimeout time.Duration `env:"IDLE_IN_TRANSACTION_TIMEOUT" envDefault:"0s" help:"close a client that sends nothing for this long inside a transaction, rolling it back (0: never)"`
	PoolMode                 PoolMode      `env:"POOL_MODE" envDefault:"session" help:"session (a client keeps its backend until it disconnects) or transaction (a client holds a backend only during a transaction)"`
	// The auth query (PgBouncer's auth_user/auth_query): SCRAM verifiers of
	// users not in the auth file, read from the server.
	AuthUser          string        `env:"AUTH_USER" help:"role the gateway logs in as to run GATEKEEPER_AUTH_QUERY, which reads the SCRAM secret of clients not in GATEKEEPER_CLIENT_AUTH_FILE, so they log in with SCRAM end to end (empty: no auth query)"`
	AuthPassword      string        `env:"AUTH_PASSWORD,unset" help:"pass-through mode: password of GATEKEEPER_AUTH_USER (default: its plain-text entry in GATEKEEPER_CLIENT_AUTH_FILE); token mode logs in with a minted token instead"`
	AuthQuery         string        `env:"AUTH_QUERY" envDefault:"SELECT username, secret FROM querycop.lookup($1)" help:"query run as GATEKEEPER_AUTH_USER with the client's user name as $1; returns no row for an unknown user, else one row of (user name, secret from pg_authid)"`
	AuthDatabase      string        `env:"AUTH_DBNAME" envDefault:"postgres" help:"database GATEKEEPER_AUTH_QUERY runs in (where its lookup function is created)"`
	AuthQueryCacheTTL time.Duration `env:"AUTH_QUERY_CACHE_TTL" envDefault:"30s" help:"how long an auth query answer (secret found, unknown user) is reused for the same user; failed lookups are retried after a second"`
	// MaxPreparedStatements bounds the protocol-level prepared statements
	// transaction mode keeps on one backend connection.
	MaxPreparedStatements int `env:"MAX_PREPARED_STATEMENTS" envDefault:"200" help:"transaction mode: most prepared statements kept on one backend connection (least recently used are closed)"`
	// TxPinning is what transaction mode does with session state it cannot
	// carry from one backend to the next.
	TxPinning TxPinning `env:"TX_PINNING" envDefault:"pin" help:"transaction mode: pin (a client whose session state cannot be carried keeps its backend until it disconnects) or refuse (such statements fail with SQLSTATE 0A000)"`

	// authFile is ClientAuthFile as LoadAuthFile read it, shared by every
	// copy of this Config, so start-up parses the file once.
	authFile *loadedAuthFile
}

// TxPinning is transaction mode's answer to session state it cannot carry.
type TxPinning string

const (
	TxPinningPin    TxPinning = "pin"
	TxPinningRefuse TxPinning = "refuse"
)

func (m *TxPinning) UnmarshalText(text []byte) error {
	return confcheck.OneOf(m, text, "transaction-mode pinning policy", TxPinningPin, TxPinningRefuse)
}

// ClientTLS is the policy for TLS on the client leg.
type ClientTLS string

const (
	ClientTLSAllow   ClientTLS = "allow"
	ClientTLSRequire ClientTLS = "require"
)

func (m *ClientTLS) UnmarshalText(text []byte) error {
	return confcheck.OneOf(m, text, "client TLS policy", ClientTLSAllow, ClientTLSRequire)
}

// PoolMode is when a client holds a backend connection.
type PoolMode string

const (
	SessionMode     PoolMode = "session"
	TransactionMode PoolMode = "transaction"
)

func (m *PoolMode) UnmarshalText(text []byte) error {
	return confcheck.OneOf(m, text, "pool mode", SessionMode, TransactionMode)
}
