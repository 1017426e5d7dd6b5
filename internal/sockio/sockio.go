// Package sockio gives the relay's TCP connections reads and writes that do
// not go through the Go scheduler's blocking-system-call path.
//
// A read or write on a non-blocking socket never blocks: it moves bytes or
// fails with EAGAIN, after which the runtime's poller waits for readiness.
// The standard library still makes it as a scheduler-visible system call,
// and under a relay's load (two calls per message, tens of thousands a
// second, loopback writes that run the receiver's TCP stack inline) the
// runtime's monitor keeps finding Ps "in a system call", hands them to other
// threads and wakes those threads, which cost more CPU than the calls
// themselves (see docs/performance.md). Made as raw calls through
// syscall.RawConn, the calls keep their P, and readiness waits, deadlines
// and Close still go through the poller exactly as before.
package sockio
