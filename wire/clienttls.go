package wire

import (
	"context"
	"crypto/tls"
	"crypto/x509"

	"github.com/querycop/querycop/backend"
)

// TLS to clients: the handshake after an SSLRequest (see startup.go), and
// the certificate it served, kept for SCRAM-SHA-256-PLUS channel binding.
// Reloading the certificate files is in certreload.go.

type tlsHandshakeError struct{ err error }

func (e *tlsHandshakeError) Error() string { return "client TLS handshake failed: " + e.err.Error() }

// servedCertKey carries, in the TLS handshake's context, where to record
// the certificate served to that client: tls-server-end-point channel
// binding is the hash of exactly that certificate, and a reload of the
// files may change the current one at any moment.
type servedCertKey struct{}

// recordServed wraps a GetCertificate function to record its answer for
// the handshake being served.
func recordServed(get func(*tls.ClientHelloInfo) (*tls.Certificate, error)) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert, err := get(hello)
		if p, ok := hello.Context().Value(servedCertKey{}).(**tls.Certificate); ok && err == nil {
			*p = cert
		}
		return cert, err
	}
}

// tlsHandshake completes the client's TLS handshake, keeping the
// certificate served for channel binding.
func (ss *session) tlsHandshake(tc *tls.Conn) error {
	var served *tls.Certificate
	err := tc.HandshakeContext(context.WithValue(context.Background(), servedCertKey{}, &served))
	ss.tlsCert = served
	return err
}

// channelBindingData is the tls-server-end-point data of this client's TLS
// connection, or nil when there is none to offer SCRAM-SHA-256-PLUS with
// (no TLS, or a certificate whose signature has no defined hash).
func (ss *session) channelBindingData() []byte {
	if !ss.tls || ss.tlsCert == nil || len(ss.tlsCert.Certificate) == 0 {
		return nil
	}
	leaf := ss.tlsCert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(ss.tlsCert.Certificate[0]); err != nil {
			return nil
		}
	}
	h, err := backend.TLSServerEndPoint(leaf)
	if err != nil {
		return nil
	}
	return h
}
