//go:build !linux

package broadcaster

import "net"

// setNotsentLowat is Linux only (TCP_NOTSENT_LOWAT); elsewhere the
// system's default applies.
func setNotsentLowat(*net.TCPConn, int) error { return nil }
