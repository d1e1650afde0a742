package broadcaster

import (
	"net"
	"syscall"
	"testing"
)

// Every accepted connection gets the configured send buffer (which Linux
// doubles) and unsent-bytes mark; zero leaves the system's.
func TestSendBufferListener(t *testing.T) {
	get := func(t *testing.T, l sendBufferListener) (sndbuf, lowat int) {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		l.Listener = ln
		cc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var e1, e2 error
		if err := rc.Control(func(fd uintptr) {
			sndbuf, e1 = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
			lowat, e2 = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpNotsentLowat)
		}); err != nil || e1 != nil || e2 != nil {
			t.Fatal(err, e1, e2)
		}
		return sndbuf, lowat
	}
	sys, sysLowat := get(t, sendBufferListener{})
	if sndbuf, lowat := get(t, sendBufferListener{size: 128 << 10, notsentLowat: 16 << 10}); sndbuf != 256<<10 || lowat != 16<<10 {
		t.Errorf("SO_SNDBUF %d, TCP_NOTSENT_LOWAT %d; want %d and %d", sndbuf, lowat, 256<<10, 16<<10)
	}
	if sndbuf, lowat := get(t, sendBufferListener{notsentLowat: 4096}); sndbuf != sys || lowat != 4096 {
		t.Errorf("lowat only: SO_SNDBUF %d (system %d), TCP_NOTSENT_LOWAT %d, want 4096", sndbuf, sys, lowat)
	}
	if sndbuf, lowat := get(t, sendBufferListener{size: 8192}); sndbuf != 16384 || lowat != sysLowat {
		t.Errorf("buffer only: SO_SNDBUF %d, TCP_NOTSENT_LOWAT %d (system %d)", sndbuf, lowat, sysLowat)
	}
}
