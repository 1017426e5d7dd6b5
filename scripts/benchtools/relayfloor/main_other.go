//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "relayfloor: needs Linux (its event loop is epoll)")
	os.Exit(2)
}
