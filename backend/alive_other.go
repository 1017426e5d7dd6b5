//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package backend

// Alive cannot peek at the socket on this platform; dead connections are
// found when first used.
func (c *Conn) Alive() bool { return true }

// closeWrite cannot reach the socket on this platform.
func (c *Conn) closeWrite() bool { return false }
