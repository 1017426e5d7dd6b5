//go:build !unix

package wire

import "net"

// unreadInput cannot look into the socket here.
func unreadInput(net.Conn) bool { return false }

// waitReadable cannot wait without reading here.
func waitReadable(*session) bool { return false }
