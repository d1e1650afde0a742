package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestHealthURL(t *testing.T) {
	for addr, want := range map[string]string{
		"":               "http://127.0.0.1:8080/healthz",
		":9000":          "http://127.0.0.1:9000/healthz",
		"0.0.0.0:9001":   "http://127.0.0.1:9001/healthz",
		"[::]:9002":      "http://127.0.0.1:9002/healthz",
		"10.1.2.3:9003":  "http://10.1.2.3:9003/healthz",
		"localhost:9004": "http://localhost:9004/healthz",
	} {
		if got := healthURL(addr); got != want {
			t.Errorf("healthURL(%q) = %q, want %q", addr, got, want)
		}
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	var status atomic.Int32
	status.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	u := healthURL(":" + port)
	if err := check(u, time.Second); err != nil {
		t.Fatalf("healthy server: %v", err)
	}
	status.Store(http.StatusServiceUnavailable)
	if err := check(u, time.Second); err == nil {
		t.Fatal("503 accepted as healthy")
	}
	srv.Close()
	if err := check(u, time.Second); err == nil {
		t.Fatal("closed server accepted as healthy")
	}
}
