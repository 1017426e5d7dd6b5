package backend

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
)

// DialError is a failure to reach the server at all. Its text,
// "backend dial failed: <cause>", is documented and grepped for by operators.
//
// It deliberately has no Unwrap: pgconn rewrites any error chain that
// contains a net.Error timeout into its own timeout type, which would lose
// the classification. The cause stays available in Err.
type DialError struct {
	Addr string
	Err  error
}

func (e *DialError) Error() string {
	return fmt.Sprintf("backend dial failed: %s (dialing %s)", netCause(e.Err), e.Addr)
}

// TLSError is a failure to establish TLS with the server, under the
// configured mode. Its text "backend TLS negotiation failed: <cause>" is
// documented. No Unwrap, for the same reason as DialError.
type TLSError struct {
	Err error
}

func (e *TLSError) Error() string {
	return "backend TLS negotiation failed: " + tlsCause(e.Err)
}

// StartupError is any other failure before the server accepted us: the
// server stopped answering, closed the connection or spoke out of turn.
type StartupError struct {
	Err error
	// Timeout: the server did not answer within the connect timeout.
	Timeout bool
}

func (e *StartupError) Error() string { return "backend dial failed: " + e.Err.Error() }
func (e *StartupError) Unwrap() error { return e.Err }

// Transient reports whether a failure to open a connection is the server
// being slow to answer (a timeout), which passes by itself under load; a
// refused connection, a bad credential or a failing token command do not.
func Transient(err error) bool {
	var dialErr *DialError
	var startupErr *StartupError
	var netErr net.Error
	switch {
	case errors.As(err, &dialErr):
		return errors.As(dialErr.Err, &netErr) && netErr.Timeout()
	case errors.As(err, &startupErr):
		return startupErr.Timeout
	}
	return false
}

// IsAuthFailure reports whether the server refused the credential: SQLSTATE
// 28P01 (invalid_password) or 28000 (invalid_authorization_specification).
func IsAuthFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000")
}

// errServerRefusedTLS is the server answering 'N' to our SSLRequest in a mode
// that does not allow plaintext.
var errServerRefusedTLS = errors.New("server does not support TLS, and GATEKEEPER_BACKEND_TLS_MODE requires it")

// netCause strips Go's "dial tcp 1.2.3.4:5432:" prefix so the documented
// "backend dial failed: i/o timeout" reads as operators expect; the address
// is appended separately.
func netCause(err error) string {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err.Error()
	}
	return err.Error()
}

// tlsCause strips crypto/tls's "tls: failed to verify certificate:" wrapper
// so the x509 reason (e.g. "x509: certificate signed by unknown authority")
// follows the documented prefix directly.
func tlsCause(err error) string {
	var verr *tls.CertificateVerificationError
	if errors.As(err, &verr) && verr.Err != nil {
		return verr.Err.Error()
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err.Error()
	}
	return err.Error()
}
