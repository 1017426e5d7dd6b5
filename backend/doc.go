// Package backend owns one connection to the PostgreSQL server: dialling,
// TLS with libpq's sslmode semantics, start-up and authentication as the
// client (trust, cleartext, MD5, SCRAM-SHA-256 and -PLUS, by pgconn), the
// cancel path, and the documented error texts.
//
// A Dialer is safe for concurrent use. After Dial, pgconn's PgConn is
// hijacked: the caller owns the raw socket and relays bytes on it. Nothing
// in this package starts a goroutine that outlives a call.
package backend
