// Package wire owns the client side of the PostgreSQL protocol, from the
// pool port's listener to the relays. The file names follow a client's
// way through it:
//
//	accept        server.go (listener, connection limit), stats.go (the
//	              views /v1/clients and /metrics read)
//	start-up      startup.go (SSLRequest, GSSENCRequest, CancelRequest,
//	              protocol negotiation), clienttls.go and certreload.go
//	              (TLS to clients), params.go (start-up parameters)
//	auth          clientauth.go (which method, cleartext or SCRAM),
//	              scram.go (SCRAM-SHA-256 and -PLUS), authfile.go
//	              (GATEKEEPER_CLIENT_AUTH_FILE), authquery.go (verifiers
//	              from GATEKEEPER_AUTH_QUERY)
//	admit         pools.go (what a session needs of the pool, declared
//	              here), startcheck.go (start-up settings the server must
//	              accept)
//	handoff       handoff.go (ParameterStatus, BackendKeyData,
//	              ReadyForQuery), cancel.go (the cancel keys)
//	relay         session mode: attach.go (acquire, relay, release) and
//	              relay.go (two pumps that walk message headers, framer.go);
//	              transaction mode: the tx*.go files below
//	release       attach.go and txattach.go hand the connection back with
//	              a pool.ReleaseState; the pool resets or retires it
//	refusals      refusal.go, refusallog.go, errors.go (one reason from
//	              internal/reasons per refusal and per session end)
//	around it     cancelwait.go (a cancel that comes while a request waits
//	              for a backend), shutdown.go (closing clients between
//	              requests), console.go (the admin console's hand-over)
//
// Transaction mode: txmode.go is the client loop (reading client messages,
// attaching a backend on the first one), txrewrite.go what each client
// message becomes on the backend, txattach.go taking a backend and giving
// it back, txbackend.go the backend side (reading answers, acting on
// replies), txstatements.go the statements kept on backends, txsettings.go
// the settings carried between backends, txeffects.go and sqlscan.go what
// a client's SQL does to its session (carried, or pinning it to its
// backend), txproto.go the message surgery. Its invariant: a client
// observes its own session, never another's.
//
// Goroutines: Serve runs the accept loop. Each client gets one goroutine
// for its start-up, which hands the session over to a fresh goroutine once
// the client has its ReadyForQuery, so an idle client holds only a small
// stack. In session mode, while a backend is attached, one more goroutine
// relays the backend's side; the relay forwards whole buffers without
// allocating per message. In transaction mode the client's goroutine waits
// for the answers itself when they come quickly, and a backend-side
// goroutine takes over only for long ones; client messages are read whole,
// since statement names are rewritten.
//
// Locks: a session's client socket is written by its backend side and, at
// shutdown, by Shutdown; writeMu orders them, and no other lock is held
// while waiting for it. Server.mu guards the cancel map and the set of live
// sessions, read by other clients' CancelRequests and by the admin views.
// gateMu orders a session's "forward a request" against shutdown and
// cancels (cancelwait.go, shutdown.go). killMu is held through a
// shutdown's kill, so the session's own goroutine can wait for that
// FATAL to be written before closing. attachedLease has its own small
// lock, and holds a released backend back while a cancel to it is on its
// way (pools.go). In transaction mode, txSession.mu guards the attachment's
// bookkeeping shared by the client and backend sides, and is never held
// across I/O.
package wire
