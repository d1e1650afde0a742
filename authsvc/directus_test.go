package authsvc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract/auth"
)

// TestDirectusAnswerMapping covers answers the stand-in never gives: only
// 401 and 403 mean "not authenticated"; everything else that is not a
// well-formed 200 is "unavailable".
func TestDirectusAnswerMapping(t *testing.T) {
	t.Parallel()
	const id = "0b7e6c1a-2f4d-4e8a-9c3b-5d6e7f8a9b0c"
	okGlobals := func(w http.ResponseWriter) {
		_, _ = io.WriteString(w, `{"data":{"app_access":true,"admin_access":true,"enforce_tfa":false}}`)
	}
	cases := []struct {
		name    string
		me      func(w http.ResponseWriter)
		globals func(w http.ResponseWriter)
		want    error
		user    auth.User
	}{
		{"ok", func(w http.ResponseWriter) { _, _ = io.WriteString(w, `{"data":{"id":"`+id+`","role":null}}`) }, okGlobals, nil, auth.User{ID: id, Admin: true}},
		{"upper-case id normalised", func(w http.ResponseWriter) {
			_, _ = io.WriteString(w, `{"data":{"id":"0B7E6C1A-2F4D-4E8A-9C3B-5D6E7F8A9B0C","role":"7C1E2D3F-4A5B-4C6D-8E7F-9A0B1C2D3E4F"}}`)
		}, okGlobals, nil, auth.User{ID: id, Role: "7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f", Admin: true}},
		{"401", func(w http.ResponseWriter) { w.WriteHeader(401) }, okGlobals, errUnauthorized, auth.User{}},
		{"403", func(w http.ResponseWriter) { w.WriteHeader(403) }, okGlobals, errUnauthorized, auth.User{}},
		{"globals 401 (revoked between calls)", func(w http.ResponseWriter) { _, _ = io.WriteString(w, `{"data":{"id":"`+id+`"}}`) }, func(w http.ResponseWriter) { w.WriteHeader(401) }, errUnauthorized, auth.User{}},
		{"500", func(w http.ResponseWriter) { w.WriteHeader(500) }, okGlobals, errUnavailable, auth.User{}},
		{"429 rate limited", func(w http.ResponseWriter) { w.WriteHeader(429) }, okGlobals, errUnavailable, auth.User{}},
		{"302 not followed", func(w http.ResponseWriter) {
			w.Header().Set("Location", "http://elsewhere.example/")
			w.WriteHeader(302)
		}, okGlobals, errUnavailable, auth.User{}},
		{"200 not JSON", func(w http.ResponseWriter) { _, _ = io.WriteString(w, `<html>proxy error</html>`) }, okGlobals, errUnavailable, auth.User{}},
		{"200 without id", func(w http.ResponseWriter) { _, _ = io.WriteString(w, `{"data":{}}`) }, okGlobals, errUnavailable, auth.User{}},
		{"200 id not a uuid", func(w http.ResponseWriter) { _, _ = io.WriteString(w, `{"data":{"id":"admin"}}`) }, okGlobals, errUnavailable, auth.User{}},
		{"globals without admin_access", func(w http.ResponseWriter) { _, _ = io.WriteString(w, `{"data":{"id":"`+id+`"}}`) }, func(w http.ResponseWriter) { _, _ = io.WriteString(w, `{"data":{}}`) }, errUnavailable, auth.User{}},
		{"globals 503", func(w http.ResponseWriter) { _, _ = io.WriteString(w, `{"data":{"id":"`+id+`"}}`) }, func(w http.ResponseWriter) { w.WriteHeader(503) }, errUnavailable, auth.User{}},
	}
	for _, c := range cases {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/users/me" {
				c.me(w)
			} else {
				c.globals(w)
			}
		}))
		m, err := newMetrics(prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{DirectusURL: srv.URL}.withDefaults()
		d := newDirectus(cfg, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
		u, err := d.resolve(context.Background(), auth.SessionRequest{Cookie: "tok"})
		srv.Close()
		if !errors.Is(err, c.want) || (c.want == nil && err != nil) || u != c.user {
			t.Errorf("%s: got %+v, %v; want %+v, %v", c.name, u, err, c.user, c.want)
		}
	}
}

// countingTransport counts the HTTP calls in flight on the client side:
// from the request to its answer or its cancellation.
type countingTransport struct {
	base           http.RoundTripper
	inFlight, peak atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	n := c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return c.base.RoundTrip(r)
}

// TestDirectusConcurrencyBound: look-ups beyond AUTHSVC_DIRECTUS_CONCURRENCY
// wait, and give up as unavailable at the timeout. The calls are counted
// where the bound holds, in the client: the server may still be holding a
// cancelled call when the next look-up's calls arrive.
func TestDirectusConcurrencyBound(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.WriteHeader(401)
	}))
	defer srv.Close()
	m, _ := newMetrics(prometheus.NewRegistry())
	cfg := Config{DirectusURL: srv.URL, DirectusConcurrency: 2, DirectusTimeout: 300 * time.Millisecond}.withDefaults()
	d := newDirectus(cfg, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	calls := &countingTransport{base: d.client.Transport}
	d.client.Transport = calls
	peak := &calls.peak
	errs := make(chan error, 5)
	for i := 0; i < 5; i++ {
		go func() {
			_, err := d.resolve(context.Background(), auth.SessionRequest{Cookie: "t"})
			errs <- err
		}()
	}
	for i := 0; i < 5; i++ {
		if err := <-errs; !errors.Is(err, errUnavailable) {
			t.Fatalf("look-up %d: %v, want unavailable (timeout or no free slot)", i, err)
		}
	}
	close(release)
	// Two look-ups in flight, two HTTP calls each.
	if p := peak.Load(); p < 1 || p > 4 {
		t.Fatalf("%d concurrent calls at Directus, want 1 to 4", p)
	}
}
