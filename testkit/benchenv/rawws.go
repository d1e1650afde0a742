package benchenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// RawConn is a minimal WebSocket client (RFC 6455) for load clients that
// must cost as little CPU as possible: it reads server frames straight
// from the socket into one buffer and hands out each message in place, with
// no copy and no allocation per message. It answers pings, and writes
// masked text and close frames. It is for benchmarks only: no extensions,
// no UTF-8 check.
type RawConn struct {
	c     net.Conn
	buf   []byte // read buffer; buf[r:w] is unread
	r, w  int
	frag  []byte // a fragmented message being reassembled
	inMsg bool

	wmu sync.Mutex // a pong from the reader and Close from another goroutine
}

// DialRaw connects to wsURL (ws://host/path) with the given request
// headers (Cookie, Origin…) and completes the opening handshake. rcvbuf,
// when positive, is the socket's SO_RCVBUF.
func DialRaw(ctx context.Context, wsURL string, h http.Header, rcvbuf int) (*RawConn, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("DialRaw %s: only ws:// URLs", wsURL)
	}
	dial := (&net.Dialer{}).DialContext
	if rcvbuf > 0 {
		dial = DialReceiveBuffer(rcvbuf)
	}
	c, err := dial(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", u.RequestURI(), u.Host, key)
	for k, vs := range h {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	if _, err := c.Write(req.Bytes()); err != nil {
		c.Close()
		return nil, err
	}
	rc := &RawConn{c: c, buf: make([]byte, 64<<10)}
	end := -1
	for end < 0 {
		if rc.w == len(rc.buf) {
			c.Close()
			return nil, errors.New("DialRaw: handshake response too long")
		}
		n, err := c.Read(rc.buf[rc.w:])
		rc.w += n
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("DialRaw: handshake: %w", err)
		}
		end = bytes.Index(rc.buf[:rc.w], []byte("\r\n\r\n"))
	}
	head := string(rc.buf[:end])
	rc.r = end + 4
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if !strings.HasPrefix(head, "HTTP/1.1 101") || !strings.Contains(head, base64.StdEncoding.EncodeToString(sum[:])) {
		c.Close()
		status, _, _ := strings.Cut(head, "\r\n")
		return nil, fmt.Errorf("DialRaw: handshake refused: %s", status)
	}
	_ = c.SetDeadline(time.Time{})
	return rc, nil
}

// Opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// ErrClosed is returned by ReadMessage after the server's close frame.
var ErrClosed = errors.New("websocket: closed by the server")

// ReadMessage returns the next text or binary message. The bytes are valid
// until the next call. Pings are answered on the way.
func (rc *RawConn) ReadMessage() ([]byte, error) {
	for {
		hdr, payload, err := rc.next()
		if err != nil {
			return nil, err
		}
		fin, op := hdr&0x80 != 0, hdr&0x0f
		switch op {
		case opPing:
			if err := rc.write(opPong, payload); err != nil {
				return nil, err
			}
		case opPong:
		case opClose:
			return nil, ErrClosed
		case opText, opBinary, opContinuation:
			if op != opContinuation && fin && !rc.inMsg {
				return payload, nil
			}
			if op != opContinuation {
				rc.frag, rc.inMsg = rc.frag[:0], true
			}
			rc.frag = append(rc.frag, payload...)
			if fin {
				rc.inMsg = false
				return rc.frag, nil
			}
		default:
			return nil, fmt.Errorf("websocket: unknown opcode %d", op)
		}
	}
}

// next returns the next frame's first header byte and its payload, in
// place in the read buffer.
func (rc *RawConn) next() (byte, []byte, error) {
	if err := rc.fill(2); err != nil {
		return 0, nil, err
	}
	b0, b1 := rc.buf[rc.r], rc.buf[rc.r+1]
	if b1&0x80 != 0 {
		return 0, nil, errors.New("websocket: masked server frame")
	}
	hl, n := 2, uint64(b1&0x7f)
	switch n {
	case 126:
		hl = 4
	case 127:
		hl = 10
	}
	if err := rc.fill(hl); err != nil {
		return 0, nil, err
	}
	switch hl {
	case 4:
		n = uint64(binary.BigEndian.Uint16(rc.buf[rc.r+2:]))
	case 10:
		n = binary.BigEndian.Uint64(rc.buf[rc.r+2:])
	}
	if n > 64<<20 {
		return 0, nil, fmt.Errorf("websocket: frame of %d bytes", n)
	}
	if err := rc.fill(hl + int(n)); err != nil {
		return 0, nil, err
	}
	p := rc.buf[rc.r+hl : rc.r+hl+int(n)]
	rc.r += hl + int(n)
	return b0, p, nil
}

// fill makes at least n unread bytes available in buf[r:w], moving or
// growing the buffer when it must.
func (rc *RawConn) fill(n int) error {
	if rc.w-rc.r >= n {
		return nil
	}
	if rc.r+n > len(rc.buf) {
		if n > len(rc.buf) {
			nb := make([]byte, max(n, 2*len(rc.buf)))
			rc.w = copy(nb, rc.buf[rc.r:rc.w])
			rc.buf = nb
		} else {
			rc.w = copy(rc.buf, rc.buf[rc.r:rc.w])
		}
		rc.r = 0
	}
	for rc.w-rc.r < n {
		m, err := rc.c.Read(rc.buf[rc.w:])
		rc.w += m
		if err != nil && rc.w-rc.r < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// WriteText sends one text message.
func (rc *RawConn) WriteText(p []byte) error { return rc.write(opText, p) }

// Close sends a normal close frame and closes the socket.
func (rc *RawConn) Close() error {
	_ = rc.write(opClose, []byte{0x03, 0xe8}) // 1000
	return rc.c.Close()
}

// write sends one masked frame (clients must mask, RFC 6455 §5.3).
func (rc *RawConn) write(op byte, p []byte) error {
	f := make([]byte, 0, 14+len(p))
	f = append(f, 0x80|op)
	switch {
	case len(p) < 126:
		f = append(f, 0x80|byte(len(p)))
	case len(p) <= 0xffff:
		f = append(f, 0x80|126, byte(len(p)>>8), byte(len(p)))
	default:
		f = append(f, 0x80|127)
		f = binary.BigEndian.AppendUint64(f, uint64(len(p)))
	}
	var mask [4]byte
	_, _ = rand.Read(mask[:])
	f = append(f, mask[:]...)
	for i, b := range p {
		f = append(f, b^mask[i&3])
	}
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	_, err := rc.c.Write(f)
	return err
}

// SetReadDeadline sets the socket's read deadline (zero: none).
func (rc *RawConn) SetReadDeadline(t time.Time) { _ = rc.c.SetReadDeadline(t) }
