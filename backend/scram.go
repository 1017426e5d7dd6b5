package backend

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SCRAMKeys log in to PostgreSQL as a user without knowing the user's
// password: the ClientKey recovered from the client's own SCRAM proof
// (proof XOR HMAC(StoredKey, AuthMessage)), and the verifier's ServerKey,
// salt and iteration count. They work only when the server holds that very
// verifier (same salt and iterations), which is why they are carried
// together. The ClientKey is as good as the password for this server: it is
// kept in memory only, never logged or shown.
type SCRAMKeys struct {
	ClientKey  []byte
	ServerKey  []byte
	Salt       []byte
	Iterations int
	// ChannelBound records that the client's own exchange used
	// SCRAM-SHA-256-PLUS (for metrics; the backend login decides its own).
	ChannelBound bool
}

// VerifierMismatchError is a login with SCRAMKeys that the server refused
// because its secret for the user is not the one the keys came from: the
// password was changed on the server after the gateway's copy of the
// verifier (auth file, auth query cache) was taken. It unwraps to a 28P01
// *pgconn.PgError, so everything that treats a refused credential as
// refused does so here too, and the client reads a message that says what
// happened rather than a plain "password authentication failed".
type VerifierMismatchError struct {
	User   string
	Reason string
}

func (e *VerifierMismatchError) Error() string { return e.pgError().Message }

func (e *VerifierMismatchError) Unwrap() error { return e.pgError() }

func (e *VerifierMismatchError) pgError() *pgconn.PgError {
	return &pgconn.PgError{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "28P01",
		// Quoted as PostgreSQL does (no escaping), not with %q.
		Message: fmt.Sprintf(`password authentication failed for user "%s": the server's password for this user has changed since querycop read its SCRAM secret`, e.User),
		Detail:  e.Reason,
		Hint:    "If the password was just changed, connect again with the new password; querycop's copy of the secret (GATEKEEPER_CLIENT_AUTH_FILE, or the auth query's cache) must be refreshed to match pg_authid.",
	}
}

// maxSCRAMIterations bounds the work a server can ask of us, as pgconn does.
const maxSCRAMIterations = 10_000_000

// connectWithKeys is connect for a login with SCRAMKeys. The whole start-up
// is done here rather than by pgconn: pgconn's SCRAM client is unexported
// and derives its keys from a password (PBKDF2 of Config.Password) with no
// hook to supply a ClientKey instead, and a password is exactly what the
// gateway does not have in this case. TLS, the socket and error
// classification are shared with the pgconn path (dialNet, classify).
func (d *Dialer) connectWithKeys(ctx context.Context, p Params, policy tlsPolicy) (*Conn, bool, error) {
	addr := net.JoinHostPort(d.cfg.Host, portString(d.cfg.Port))
	conn, usedTLS, err := d.dialNet(ctx, "tcp", addr, policy)
	if err != nil {
		return nil, usedTLS, err
	}
	c, err := d.startupWithKeys(ctx, conn, p)
	if err != nil {
		conn.Close()
		return nil, usedTLS, err
	}
	return c, usedTLS, nil
}

func (d *Dialer) startupWithKeys(ctx context.Context, conn net.Conn, p Params) (*Conn, error) {
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	params := maps.Clone(p.Runtime)
	if params == nil {
		params = map[string]string{}
	}
	params["user"] = p.User
	params["database"] = p.Database
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params})
	if err := fe.Flush(); err != nil {
		return nil, d.startupFailed(ctx, err)
	}
	c := &Conn{netConn: conn, params: map[string]string{}, dialer: d}
	_, c.tls = conn.(*tls.Conn)
	for {
		msg, err := fe.Receive()
		if err != nil {
			return nil, d.startupFailed(ctx, err)
		}
		switch m := msg.(type) {
		case *pgproto3.AuthenticationOk:
		case *pgproto3.AuthenticationSASL:
			if err := scramLogin(fe, conn, p, m.AuthMechanisms); err != nil {
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) || isStartupError(err) {
					return nil, err
				}
				return nil, d.startupFailed(ctx, err)
			}
		case *pgproto3.AuthenticationCleartextPassword, *pgproto3.AuthenticationMD5Password,
			*pgproto3.AuthenticationGSS, *pgproto3.AuthenticationSASLContinue, *pgproto3.AuthenticationSASLFinal:
			return nil, &StartupError{Err: fmt.Errorf(
				"the server asked for %s authentication for user %q, but querycop holds only SCRAM keys for this user, recovered from the client's SCRAM login; let pg_hba.conf use scram-sha-256 for it, or give querycop the password (a plain-text entry in GATEKEEPER_CLIENT_AUTH_FILE)",
				authName(m), p.User)}
		case *pgproto3.ParameterStatus:
			c.params[m.Name] = m.Value
		case *pgproto3.BackendKeyData:
			c.pid, c.secretKey = m.ProcessID, m.SecretKey
		case *pgproto3.ErrorResponse:
			return nil, pgconn.ErrorResponseToPgError(m)
		case *pgproto3.NoticeResponse, *pgproto3.NegotiateProtocolVersion:
		case *pgproto3.ReadyForQuery:
			if n := fe.ReadBufferLen(); n != 0 {
				return nil, &StartupError{Err: fmt.Errorf("server sent %d unexpected bytes after ReadyForQuery", n)}
			}
			_ = conn.SetDeadline(time.Time{})
			c.created = time.Now()
			return c, nil
		default:
			return nil, &StartupError{Err: fmt.Errorf("unexpected %T from the server during start-up", msg)}
		}
	}
}

func (d *Dialer) startupFailed(ctx context.Context, err error) error {
	if ctx.Err() != nil || isTimeout(err) {
		return &StartupError{Err: fmt.Errorf("no answer from the server within %s (GATEKEEPER_BACKEND_CONNECT_TIMEOUT)", d.cfg.ConnectTimeout), Timeout: true}
	}
	return &StartupError{Err: err}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isStartupError(err error) bool {
	var se *StartupError
	var vm *VerifierMismatchError
	return errors.As(err, &se) || errors.As(err, &vm)
}

func authName(m pgproto3.BackendMessage) string {
	switch m.(type) {
	case *pgproto3.AuthenticationCleartextPassword:
		return "cleartext password"
	case *pgproto3.AuthenticationMD5Password:
		return "MD5 password"
	case *pgproto3.AuthenticationGSS:
		return "GSSAPI"
	}
	return "out-of-sequence SASL"
}

// scramLogin is the client side of SCRAM-SHA-256(-PLUS) (RFC 5802, RFC
// 7677) with a ClientKey in place of the password. Channel binding is used
// when the connection is TLS and the server offers -PLUS, as libpq and pgconn
// do by default (channel_binding=prefer).
func scramLogin(fe *pgproto3.Frontend, conn net.Conn, p Params, offered []string) error {
	keys := p.SCRAM
	mechanism, gs2 := "SCRAM-SHA-256", "n,,"
	var cbData []byte
	if tc, ok := conn.(*tls.Conn); ok {
		gs2 = "y,,"
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 && slices.Contains(offered, "SCRAM-SHA-256-PLUS") {
			if h, err := TLSServerEndPoint(certs[0]); err == nil {
				mechanism, gs2, cbData = "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", h
			}
		}
	}
	if !slices.Contains(offered, "SCRAM-SHA-256") && mechanism != "SCRAM-SHA-256-PLUS" {
		return &StartupError{Err: fmt.Errorf("the server offers SASL mechanisms %v, none of which querycop can use with SCRAM keys", offered)}
	}

	nonceBytes := make([]byte, 18)
	_, _ = rand.Read(nonceBytes)
	clientNonce := base64.RawStdEncoding.EncodeToString(nonceBytes)
	// The user name is taken from the start-up packet; PostgreSQL ignores n=.
	clientFirstBare := "n=,r=" + clientNonce
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mechanism, Data: []byte(gs2 + clientFirstBare)})
	if err := fe.Flush(); err != nil {
		return err
	}

	msg, err := fe.Receive()
	if err != nil {
		return err
	}
	var serverFirst string
	switch m := msg.(type) {
	case *pgproto3.AuthenticationSASLContinue:
		serverFirst = string(m.Data) // copied: Data aliases the read buffer
	case *pgproto3.ErrorResponse:
		return pgconn.ErrorResponseToPgError(m)
	default:
		return &StartupError{Err: fmt.Errorf("unexpected %T from the server instead of SCRAM server-first-message", msg)}
	}
	nonce, salt, iterations, err := parseServerFirst(serverFirst, clientNonce)
	if err != nil {
		return &StartupError{Err: err}
	}
	if iterations != keys.Iterations || !bytes.Equal(salt, keys.Salt) {
		// Proving anything would be pointless: these keys belong to
		// another verifier. Checked before sending a proof, so a stale
		// copy costs the server no failed-login entry for a client that
		// knew the right password at the time.
		return &VerifierMismatchError{User: p.User, Reason: fmt.Sprintf(
			"The server's SCRAM secret has a different salt or iteration count (server: %d iterations) from the one the client was checked against (%d iterations).",
			iterations, keys.Iterations)}
	}

	cbInput := append([]byte(gs2), cbData...)
	withoutProof := "c=" + base64.StdEncoding.EncodeToString(cbInput) + ",r=" + nonce
	authMessage := clientFirstBare + "," + serverFirst + "," + withoutProof
	storedKey := sha256.Sum256(keys.ClientKey)
	signature := hmacSum(storedKey[:], authMessage)
	proof := make([]byte, len(signature))
	for i := range proof {
		proof[i] = keys.ClientKey[i] ^ signature[i]
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof))})
	if err := fe.Flush(); err != nil {
		return err
	}

	msg, err = fe.Receive()
	if err != nil {
		return err
	}
	switch m := msg.(type) {
	case *pgproto3.AuthenticationSASLFinal:
		want := "v=" + base64.StdEncoding.EncodeToString(hmacSum(keys.ServerKey, authMessage))
		if !hmac.Equal(m.Data, []byte(want)) {
			// The server knows a different ServerKey for the same salt:
			// either not our verifier, or not the server we meant to reach.
			return &StartupError{Err: errors.New("the server's SCRAM signature does not match the verifier querycop holds; it may not be the server configured, or its secret for the user was replaced")}
		}
		return nil
	case *pgproto3.ErrorResponse:
		pgErr := pgconn.ErrorResponseToPgError(m)
		if pgErr.Code == "28P01" {
			// Same salt and iterations but a proof the server refuses: its
			// StoredKey differs, i.e. a verifier set with a reused salt.
			return &VerifierMismatchError{User: p.User, Reason: "The server refused the SCRAM proof made with the keys of the secret the client was checked against."}
		}
		return pgErr
	default:
		return &StartupError{Err: fmt.Errorf("unexpected %T from the server instead of SCRAM server-final-message", msg)}
	}
}

// parseServerFirst reads "r=<nonce>,s=<salt>,i=<iterations>[,...]".
func parseServerFirst(msg, clientNonce string) (nonce string, salt []byte, iterations int, err error) {
	fields := bytes.Split([]byte(msg), []byte(","))
	if len(fields) < 3 || !bytes.HasPrefix(fields[0], []byte("r=")) || !bytes.HasPrefix(fields[1], []byte("s=")) || !bytes.HasPrefix(fields[2], []byte("i=")) {
		return "", nil, 0, errors.New("malformed SCRAM server-first-message from the server")
	}
	nonce = string(fields[0][2:])
	if len(nonce) <= len(clientNonce) || nonce[:len(clientNonce)] != clientNonce {
		return "", nil, 0, errors.New("the server's SCRAM nonce does not extend ours")
	}
	if salt, err = base64.StdEncoding.DecodeString(string(fields[1][2:])); err != nil || len(salt) == 0 {
		return "", nil, 0, errors.New("malformed SCRAM salt from the server")
	}
	iterations, err = strconv.Atoi(string(fields[2][2:]))
	if err != nil || iterations < 1 || iterations > maxSCRAMIterations {
		return "", nil, 0, fmt.Errorf("unusable SCRAM iteration count %q from the server", fields[2][2:])
	}
	return nonce, salt, iterations, nil
}

// TLSServerEndPoint is the tls-server-end-point channel binding data of a
// certificate (RFC 5929 §4.1): its hash with the signature's own hash
// function, SHA-256 in place of MD5 and SHA-1. Other algorithms (Ed25519)
// have none, as in PostgreSQL, which then does not offer -PLUS.
func TLSServerEndPoint(cert *x509.Certificate) ([]byte, error) {
	var h hash.Hash
	switch cert.SignatureAlgorithm {
	case x509.MD5WithRSA, x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.DSAWithSHA1,
		x509.SHA256WithRSA, x509.SHA256WithRSAPSS, x509.ECDSAWithSHA256, x509.DSAWithSHA256:
		h = sha256.New()
	case x509.SHA384WithRSA, x509.SHA384WithRSAPSS, x509.ECDSAWithSHA384:
		h = sha512.New384()
	case x509.SHA512WithRSA, x509.SHA512WithRSAPSS, x509.ECDSAWithSHA512:
		h = sha512.New()
	default:
		return nil, fmt.Errorf("tls-server-end-point channel binding is undefined for signature algorithm %v", cert.SignatureAlgorithm)
	}
	h.Write(cert.Raw)
	return h.Sum(nil), nil
}

func hmacSum(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}
