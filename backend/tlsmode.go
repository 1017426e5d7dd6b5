package backend

import "github.com/querycop/querycop/internal/confcheck"

// TLSMode is the backend leg's TLS policy, named and behaving as libpq's
// sslmode (https://www.postgresql.org/docs/current/libpq-ssl.html).
type TLSMode string

const (
	TLSDisable    TLSMode = "disable"
	TLSAllow      TLSMode = "allow"
	TLSPrefer     TLSMode = "prefer"
	TLSRequire    TLSMode = "require"
	TLSVerifyCA   TLSMode = "verify-ca"
	TLSVerifyFull TLSMode = "verify-full"
)

// TLSModes lists every accepted mode, weakest first.
var TLSModes = []TLSMode{TLSDisable, TLSAllow, TLSPrefer, TLSRequire, TLSVerifyCA, TLSVerifyFull}

func (m *TLSMode) UnmarshalText(text []byte) error {
	return confcheck.OneOf(m, text, "TLS mode", TLSModes...)
}

// Verifies reports whether the mode checks the server certificate chain.
func (m TLSMode) Verifies() bool { return m == TLSVerifyCA || m == TLSVerifyFull }

// AlwaysTLS reports whether the mode never falls back to plaintext. Only
// these modes may carry a minted token.
func (m TLSMode) AlwaysTLS() bool { return m == TLSRequire || m.Verifies() }
