// Command healthcheck is the HEALTHCHECK of the trm-live worker images. The
// images are distroless (no shell, no curl), so this tiny static binary
// asks the worker's own /healthz and exits 0 on a 2xx answer, 1 otherwise.
//
// The address comes from HTTP_ADDR, the same variable the worker listens
// on (":8080" when unset, the workers' image default); a wildcard or empty
// host is replaced by 127.0.0.1. -url overrides it all.
//
// It is its own module with no dependency, built with GOWORK=off in
// deploy/docker/Dockerfile.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	rawURL := fs.String("url", "", "URL to GET (default: http://<HTTP_ADDR>/healthz)")
	timeout := fs.Duration("timeout", 2*time.Second, "request timeout")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	u := *rawURL
	if u == "" {
		u = healthURL(os.Getenv("HTTP_ADDR"))
	}
	if err := check(u, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		os.Exit(1)
	}
}

// healthURL turns a listen address into the /healthz URL on loopback.
func healthURL(addr string) string {
	if addr == "" {
		addr = ":8080"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		// Not host:port; let the request fail with a readable error.
		return "http://" + addr + "/healthz"
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz"
}

// check GETs u and returns nil on a 2xx status.
func check(u string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return nil
}
