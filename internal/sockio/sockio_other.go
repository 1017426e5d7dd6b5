//go:build !linux

package sockio

import "net"

// Wrap returns conn unchanged: raw calls are implemented for Linux only.
func Wrap(conn net.Conn) net.Conn { return conn }
