//go:build linux

package backend

import "syscall"

// tcpUserTimeout is TCP_USER_TIMEOUT, the same number on every Linux
// architecture (syscall names it on only some).
const tcpUserTimeout = 0x12

// giveUpUnacked makes the kernel abort the connection when what was sent
// stays unacknowledged for d: a server whose process is busy still has
// its kernel acknowledge, one that is unreachable (a network partition,
// a failover that left the old address silent) does not.
func giveUpUnacked(fd uintptr, d int) {
	_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, d)
}
