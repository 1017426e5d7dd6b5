// Package wire owns the client side of the PostgreSQL protocol: the pool
// port listener, TLS to clients (with certificate reload), the start-up
// phase (SSLRequest, GSSENCRequest, CancelRequest, protocol negotiation),
// client authentication (a password for pass-through mode, or the gateway's
// own SCRAM/MD5 check against GATEKEEPER_CLIENT_AUTH_FILE), the handoff, the
// relay in session and transaction mode, and the map of cancel keys.
//
// Goroutines: Serve runs the accept loop. Each client gets one goroutine
// for its start-up, which hands the session over to a fresh goroutine once
// the client has its ReadyForQuery, so an idle client holds only a small
// stack. While a backend is attached, one more goroutine relays the
// backend's side. The session-mode relay walks message headers only and
// forwards whole buffers without allocating per message; transaction mode
// reads client messages whole, since it renames prepared statements.
//
// Transaction mode is in the tx*.go files: txmode.go is the client loop
// (reading client messages, attaching a backend on the first one),
// txrewrite.go what each client message becomes on the backend,
// txattach.go taking a backend and giving it back, txbackend.go the
// backend side (reading answers, acting on replies), txstatements.go the
// statements kept on backends, txsettings.go the settings carried between
// backends, txeffects.go and sqlscan.go what a client's SQL does to its
// session (carried, or pinning it to its backend), txproto.go the message
// surgery. Its invariant: a client
// observes its own session, never another's.
//
// Concurrency: a session's client socket is written by its backend side
// and, at shutdown, by Shutdown; writeMu orders them. The cancel map is
// guarded by Server.mu and read by other clients' CancelRequests. In
// transaction mode, txSession.mu guards the attachment's bookkeeping shared
// by the client and backend sides, and is never held across I/O.
package wire
