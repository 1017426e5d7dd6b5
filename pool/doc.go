// Package pool owns the pools of backend connections: one puddle pool per
// key (database, user and, in pass-through mode, a keyed hash of the
// client's password or SCRAM keys), credential checks for admission, reset
// on release, proactive retirement and replacement, and the statistics.
//
// Goroutines: one janitor for all pools (New starts it, Close stops it);
// puddle runs constructors and destructors in goroutines of its own; and a
// connection closed while its server process goes on (a statement that
// ignores cancellation) is watched by a goroutine until the process exits
// or the pools close, counted against its pool's size all that time.
// Everything exported is safe for concurrent use; a Lease belongs to one
// session.
//
// In pass-through mode a pool keeps the last verified password (or SCRAM
// keys) in memory, so the janitor can open replacement connections before
// old ones retire; it is never logged and is dropped with the pool.
package pool
