// Package reasons is the closed set of reasons Querycop gives when it
// refuses a client, when a client's session ends, and when it closes a
// backend connection. Each reason is the value of the `reason` field of
// the log line, the label of its metric (querycop_clients_refused_total,
// querycop_client_disconnects_total, querycop_pool_connections_closed_total)
// and a row of docs/operations.md, which a test keeps in step with this
// list.
package reasons

// Reason is one of the constants below; code outside this package never
// makes up its own.
type Reason string

// Kind says where a reason is used; some reasons serve more than one.
type Kind uint8

const (
	Refusal    Kind = 1 << iota // a client refused before or at the start of its session
	Disconnect                  // why a client's session ended
	ConnClose                   // why a backend connection was closed
)

// Info is what is known of a reason besides its name.
type Info struct {
	Kinds Kind
	// SQLState is the code the client gets with it ("" when nothing can
	// be sent, or when the server's own error is passed on).
	SQLState string
	// Setting is the configuration variable responsible, if one is.
	Setting string
}

// Refusals.
const (
	MaxClients        Reason = "max-clients"
	BadStartup        Reason = "bad-startup"
	ProtocolViolation Reason = "protocol-violation"
	LoginTimeout      Reason = "login-timeout"
	ClientTLS         Reason = "client-tls"
	ClientTLSRequired Reason = "client-tls-required"
	ClientAuthFailed  Reason = "client-auth-failed"
	LoginRateLimited  Reason = "login-rate-limited"
	AuthQueryFailed   Reason = "auth-query-failed"
	MaxPools          Reason = "max-pools"
	BackendRefused    Reason = "backend-refused"
	TokenFailed       Reason = "token-failed"
	BackendTLS        Reason = "backend-tls"
	BackendDown       Reason = "backend-down"
	AcquireTimeout    Reason = "acquire-timeout"
	Paused            Reason = "paused"
)

// Session ends (with ProtocolViolation, BadStartup and the refusals for a
// backend that could not be had).
const (
	ClientClose              Reason = "client-close"
	ClientGone               Reason = "client-gone"
	BackendGone              Reason = "backend-gone"
	Shutdown                 Reason = "shutdown"
	ClientIdleTimeout        Reason = "client-idle-timeout"
	IdleInTransactionTimeout Reason = "idle-in-transaction-timeout"
)

// Backend connection closes (with BackendGone and ClientGone).
const (
	Lifetime     Reason = "lifetime"
	Idle         Reason = "idle"
	ResetFailed  Reason = "reset-failed"
	Pause        Reason = "pause"
	Resize       Reason = "resize"
	SessionState Reason = "session-state"
	// CredentialCheck: a full pool's idle connection closed to make room
	// for checking a client's password against the server.
	CredentialCheck Reason = "credential-check"
)

var all = map[Reason]Info{
	MaxClients:        {Refusal, "53300", "GATEKEEPER_MAX_CLIENT_CONN"},
	BadStartup:        {Refusal | Disconnect, "", ""},
	ProtocolViolation: {Refusal | Disconnect, "08P01", "GATEKEEPER_MAX_MESSAGE_SIZE"},
	LoginTimeout:      {Refusal, "08P01", "GATEKEEPER_CLIENT_LOGIN_TIMEOUT"},
	ClientTLS:         {Refusal, "", "GATEKEEPER_PROXY_TLS_CLIENT_CA"},
	ClientTLSRequired: {Refusal, "28000", "GATEKEEPER_CLIENT_TLS"},
	ClientAuthFailed:  {Refusal, "28P01", "GATEKEEPER_CLIENT_AUTH_FILE"},
	LoginRateLimited:  {Refusal, "28000", ""},
	AuthQueryFailed:   {Refusal, "28000", "GATEKEEPER_AUTH_QUERY"},
	MaxPools:          {Refusal, "53300", "GATEKEEPER_MAX_POOLS"},
	BackendRefused:    {Refusal | Disconnect, "", ""},
	TokenFailed:       {Refusal | Disconnect, "08001", "GATEKEEPER_BACKEND_TOKEN_CMD"},
	BackendTLS:        {Refusal | Disconnect, "08001", "GATEKEEPER_BACKEND_TLS_MODE"},
	BackendDown:       {Refusal | Disconnect, "08001", "GATEKEEPER_BACKEND_HOST"},
	AcquireTimeout:    {Refusal | Disconnect, "53300", "GATEKEEPER_POOL_ACQUIRE_TIMEOUT"},
	Paused:            {Refusal | Disconnect, "57P03", ""},

	ClientClose:              {Disconnect, "", ""},
	ClientGone:               {Disconnect | ConnClose, "", ""},
	BackendGone:              {Disconnect | ConnClose, "", ""},
	Shutdown:                 {Disconnect, "57P01", "GATEKEEPER_SHUTDOWN_TIMEOUT"},
	ClientIdleTimeout:        {Disconnect, "57P05", "GATEKEEPER_CLIENT_IDLE_TIMEOUT"},
	IdleInTransactionTimeout: {Disconnect, "25P03", "GATEKEEPER_IDLE_IN_TRANSACTION_TIMEOUT"},

	Lifetime:        {ConnClose, "", "GATEKEEPER_POOL_MAX_CONN_LIFETIME"},
	Idle:            {ConnClose, "", "GATEKEEPER_POOL_MAX_CONN_IDLE_TIME"},
	ResetFailed:     {ConnClose, "", "GATEKEEPER_POOL_RESET_QUERY"},
	Pause:           {ConnClose, "", ""},
	Resize:          {ConnClose, "", "GATEKEEPER_POOL_SIZE"},
	SessionState:    {ConnClose, "", "GATEKEEPER_POOL_MODE"},
	CredentialCheck: {ConnClose, "", "GATEKEEPER_POOL_AUTH_CACHE_TTL"},
}

// Info returns what is known of r.
func (r Reason) Info() Info { return all[r] }

// Of lists the reasons of a kind, for metrics that show zeros and for the
// documentation test.
func Of(k Kind) []Reason {
	var out []Reason
	for r, info := range all {
		if info.Kinds&k != 0 {
			out = append(out, r)
		}
	}
	return out
}
