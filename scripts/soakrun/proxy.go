package soakrun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// Proxy is a reverse proxy in front of a real Directus, in the soak's
// process: authsvc talks to it, so the directus-5xx and directus-hang
// faults can be injected although a real Directus cannot be told to fail.
// Outside a fault it forwards every request unchanged (cookies, headers,
// body, status and Set-Cookie of the answer).
type Proxy struct {
	// URL is http://127.0.0.1:<port> once Listen returned.
	URL string

	target *url.URL
	rp     *httputil.ReverseProxy
	srv    *http.Server

	mu      sync.Mutex
	status  int
	hold    chan struct{}
	release func() // of the current hold
	held    int    // requests waiting in a hold
}

// NewProxy returns a proxy forwarding to target (http://host:port, any
// path prefix kept).
func NewProxy(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("directus proxy: target %q is not an http(s) URL", target)
	}
	p := &Proxy{target: u}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = u.Host
		},
		// Directus unreachable: answered as a backend error, the way a
		// load balancer would, never as a refusal.
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeDirectusError(w, http.StatusBadGateway)
		},
	}
	return p, nil
}

// SetStatus makes every request answer this status with a Directus-shaped
// error body, without reaching Directus; 0 forwards again.
func (p *Proxy) SetStatus(code int) {
	p.mu.Lock()
	p.status = code
	p.mu.Unlock()
}

// Hold makes every request that arrives from now on wait until release is
// called (then it is forwarded) or its client gives up.
func (p *Proxy) Hold() (release func()) {
	ch := make(chan struct{})
	var once sync.Once
	release = func() {
		once.Do(func() {
			p.mu.Lock()
			if p.hold == ch {
				p.hold, p.release = nil, nil
			}
			p.mu.Unlock()
			close(ch)
		})
	}
	p.mu.Lock()
	p.hold, p.release = ch, release
	p.mu.Unlock()
	return release
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	status, hold := p.status, p.hold
	p.mu.Unlock()
	if hold != nil {
		// The body is read first, so the server watches the connection
		// and a client that gives up ends the wait (Directus requests
		// are small JSON).
		if r.Body != nil {
			b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		p.addHeld(1)
		select {
		case <-hold:
			p.addHeld(-1)
		case <-r.Context().Done():
			p.addHeld(-1)
			return
		}
	}
	if status != 0 {
		writeDirectusError(w, status)
		return
	}
	p.rp.ServeHTTP(w, r)
}

func (p *Proxy) addHeld(n int) {
	p.mu.Lock()
	p.held += n
	p.mu.Unlock()
}

// Held is how many requests are waiting in a hold now.
func (p *Proxy) Held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// Listen serves on addr ("" means a free loopback port) and sets URL.
func (p *Proxy) Listen(addr string) error {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	p.URL = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return nil
}

// Close stops the server; held requests are released first.
func (p *Proxy) Close() {
	p.mu.Lock()
	release := p.release
	p.mu.Unlock()
	if release != nil {
		release()
	}
	if p.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = p.srv.Close()
		}
	}
}

// writeDirectusError writes {"errors":[{"message","extensions":{"code"}}]},
// the shape of every Directus error.
func writeDirectusError(w http.ResponseWriter, status int) {
	type ext struct {
		Code string `json:"code"`
	}
	type e struct {
		Message    string `json:"message"`
		Extensions ext    `json:"extensions"`
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []e{{http.StatusText(status), ext{"SERVICE_UNAVAILABLE"}}}})
}
