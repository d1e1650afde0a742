package benchenv

import (
	"context"
	"io"
	"net"

	"github.com/gorilla/websocket"
)

// ReadFrame reads the next WebSocket message into buf, grown as needed, and
// returns it with the buffer to pass to the next call. Load clients reuse
// one buffer each: their CPU goes to reading, not to garbage (gorilla's
// ReadMessage allocates every message).
func ReadFrame(conn *websocket.Conn, buf []byte) (data, keep []byte, err error) {
	_, r, err := conn.NextReader()
	if err != nil {
		return nil, buf, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, buf, nil
		}
		if err != nil {
			return nil, buf, err
		}
	}
}

// DialReceiveBuffer returns a dial function for websocket.Dialer's
// NetDialContext that sets each connection's SO_RCVBUF to n bytes (Linux
// doubles it). Many load clients share the benchmark's CPU: with the
// kernel's autotuning (megabytes on loopback) a client that falls behind
// hoards seconds of frames in its own receive buffer, which no server can
// coalesce, while a browser has a CPU of its own.
func DialReceiveBuffer(n int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(n)
		}
		return c, err
	}
}
