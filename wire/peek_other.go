//go:build !unix

package wire

import "net"

// unreadInput cannot look into the socket here.
func unreadInput(net.Conn) bool { return false }

// readFirst leaves the read to the caller here.
func readFirst(*session, []byte) (int, error, bool) { return 0, nil, false }
