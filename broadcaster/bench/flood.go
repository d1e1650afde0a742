package main

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"trm-live/contract/auth"
)

// benchCookie is a session cookie value the stand-in accepts, shaped like a
// Directus session JWT (auth.SessionRequest.Plausible).
func benchCookie(id string) string {
	b64 := base64.RawURLEncoding
	return b64.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." +
		b64.EncodeToString([]byte(`{"id":"`+id+`"}`)) + ".YmVuY2g"
}

// cookieUser returns the id in a bench cookie's payload; "" for a bogus one.
func cookieUser(cookie string) string {
	parts := strings.Split(cookie, ".")
	if len(parts) != 3 {
		return ""
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		ID string `json:"id"`
	}
	if err != nil || json.Unmarshal(raw, &c) != nil || strings.HasPrefix(c.ID, "bogus") {
		return ""
	}
	return c.ID
}

// refuseLater answers a session request with 401 after the Directus
// latency, off micro's serial handler (as authsvc runs its look-ups).
func refuseLater(nc *nats.Conn, r micro.Request, d time.Duration) {
	reply := r.Reply()
	time.AfterFunc(d, func() {
		_ = nc.PublishMsg(&nats.Msg{Subject: reply, Header: nats.Header{
			micro.ErrorCodeHeader: {auth.CodeUnauthorized}, micro.ErrorHeader: {"refused"}}})
	})
}

// floodRun measures real users' handshake latency (dial to 101) at
// -flood-real per second, without a flood, with -flood bogus handshakes
// per second from another address, and without again, on the broadcaster
// process at c.srvAddr with its default handshake limits.
func (c *coord) floodRun() error {
	fmt.Printf("handshake flood: real users %d/s from 127.0.0.1, bogus %d/s from 127.0.0.2 (well-formed JWTs the authsvc stand-in refuses after %s), %s per phase\n",
		c.cfg.FloodReal, c.cfg.Flood, c.cfg.FloodLatency, c.cfg.FloodDuration)
	for _, phase := range []struct {
		name  string
		flood bool
	}{{"baseline", false}, {"flood", true}, {"baseline again", false}} {
		before := c.connResults()
		var stop atomic.Bool
		var fl floodStats
		var wg sync.WaitGroup
		if phase.flood {
			wg.Go(func() { c.flood(c.cfg.Flood, &stop, &fl) })
		}
		lat, failed := c.realHandshakes(c.cfg.FloodReal, c.cfg.FloodDuration)
		stop.Store(true)
		wg.Wait()
		after := c.connResults()
		slices.Sort(lat)
		pct := func(p float64) time.Duration {
			if len(lat) == 0 {
				return 0
			}
			return lat[min(len(lat)-1, int(p*float64(len(lat))))]
		}
		fmt.Printf("%-15s real: %4d handshakes, %d failed, p50 %6.2f ms, p99 %6.2f ms, max %6.2f ms",
			phase.name, len(lat), failed, ms(pct(0.5)), ms(pct(0.99)), ms(pct(1)))
		if phase.flood {
			fmt.Printf("   bogus: %.0f/s sent, %d answered 429, %d other, %d errors",
				float64(fl.sent.Load())/c.cfg.FloodDuration.Seconds(), fl.limited.Load(), fl.other.Load(), fl.errors.Load())
		}
		fmt.Printf("   server: %s\n", diffResults(before, after))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// realHandshakes dials n per second for d, each a new user, and returns
// each successful dial's duration (TCP connect to the 101 response).
func (c *coord) realHandshakes(n int, d time.Duration) ([]time.Duration, int) {
	var mu sync.Mutex
	var lat []time.Duration
	failed := 0
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(n))
	defer tick.Stop()
	end := time.Now().Add(d)
	dialer := websocket.Dialer{HandshakeTimeout: 10 * time.Second,
		NetDialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}).DialContext}
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		wg.Go(func() {
			h := http.Header{"Cookie": {"directus_session_token=" + benchCookie(fmt.Sprintf("real-%d", i))}}
			start := time.Now()
			conn, _, err := dialer.Dial("ws://"+c.srvAddr+"/ws-live", h)
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			lat = append(lat, took)
			_ = conn.Close()
		})
	}
	wg.Wait()
	return lat, failed
}

type floodStats struct {
	sent, limited, other, errors atomic.Int64
}

// flood sends rate bogus upgrade requests per second from 127.0.0.2 until
// stop, each on a new connection, and reads the status line.
func (c *coord) flood(rate int, stop *atomic.Bool, st *floodStats) {
	const workers = 512
	jobs := make(chan int, workers)
	var wg sync.WaitGroup
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				conn, err := d.Dial("tcp", c.srvAddr)
				if err != nil {
					st.errors.Add(1)
					continue
				}
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				req := "GET /ws-live HTTP/1.1\r\nHost: " + c.srvAddr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
					"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
					"Cookie: directus_session_token=" + benchCookie(fmt.Sprintf("bogus-%d", i)) + "\r\n\r\n"
				st.sent.Add(1)
				if _, err := io.WriteString(conn, req); err != nil {
					st.errors.Add(1)
					_ = conn.Close()
					continue
				}
				line, err := bufio.NewReader(conn).ReadString('\n')
				switch {
				case err != nil:
					st.errors.Add(1)
				case strings.Contains(line, " 429 "):
					st.limited.Add(1)
				default:
					st.other.Add(1)
				}
				_ = conn.Close()
			}
		})
	}
	// Ticks of 1 ms, rate/1000 requests each: a time.Ticker cannot tick
	// 10,000 times a second reliably.
	tick := time.NewTicker(time.Millisecond)
	start := time.Now()
	sent := 0
	for !stop.Load() {
		<-tick.C
		due := int(time.Since(start).Seconds() * float64(rate))
		for ; sent < due; sent++ {
			select {
			case jobs <- sent:
			default: // workers saturated: this one is not sent
			}
		}
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
}

// connResults reads broadcaster_connections_total by result from the
// server's /metrics.
func (c *coord) connResults() map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + c.srvAddr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, `broadcaster_connections_total{result="`) {
			continue
		}
		rest := strings.TrimPrefix(line, `broadcaster_connections_total{result="`)
		name, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		var v float64
		_, _ = fmt.Sscan(val, &v)
		out[name] = v
	}
	return out
}

func diffResults(before, after map[string]float64) string {
	var parts []string
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, d))
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
