// Package devorigin is the dev binary's single HTTP origin, the dev
// counterpart of Traefik in stage and prod: the viewer page at "/", the
// broadcaster's /ws-live (reverse-proxied, WebSocket upgrades included),
// and Directus's paths /auth/, /users/, /items/, /policies/, /server/ served
// by the dev auth backend (scripts/devauth) or reverse-proxied to a real
// Directus. One origin is what lets the browser's httpOnly
// directus_session_token cookie, set by /auth/login, reach the WebSocket
// upgrade. DEV-ONLY: it listens on loopback addresses only.
package devorigin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"trm-live/contract/ws"
	"trm-live/scripts/devauth"
	"trm-live/scripts/viewer"
)

// DirectusPaths are the path prefixes routed to Directus (or devauth).
var DirectusPaths = []string{"/auth/", "/users/", "/items/", "/policies/", "/server/"}

// Config configures the origin.
type Config struct {
	// Addr is the listen address; it must be a loopback address.
	Addr string
	// Listener, when set, is used instead of listening on Addr (tests).
	Listener net.Listener
	// BroadcasterURL is the broadcaster's HTTP base (http://127.0.0.1:port),
	// whose /ws-live is proxied.
	BroadcasterURL string
	// DirectusURL, when set, is a real Directus the Directus paths are
	// proxied to; otherwise Auth serves them.
	DirectusURL string
	// Auth is the dev auth backend used when DirectusURL is empty.
	Auth http.Handler
	// Logger; nil discards.
	Logger *slog.Logger
}

// Handler returns the origin's routes.
func Handler(cfg Config) (http.Handler, error) {
	b, err := url.Parse(cfg.BroadcasterURL)
	if err != nil || b.Host == "" {
		return nil, fmt.Errorf("broadcaster URL %q: want http://host:port", cfg.BroadcasterURL)
	}
	var dx http.Handler
	switch {
	case cfg.DirectusURL != "":
		d, err := url.Parse(cfg.DirectusURL)
		if err != nil || d.Host == "" {
			return nil, fmt.Errorf("directus URL %q: want http://host:port", cfg.DirectusURL)
		}
		p := httputil.NewSingleHostReverseProxy(d)
		// Directus sees its own host, so its cookies and redirects are
		// unchanged; the browser only ever sees this origin.
		dir := p.Director
		p.Director = func(r *http.Request) { dir(r); r.Host = d.Host }
		dx = p
	case cfg.Auth != nil:
		dx = cfg.Auth
	default:
		return nil, errors.New("neither a Directus URL nor a dev auth backend")
	}
	// The Host header is kept, so the broadcaster's same-origin check
	// compares the browser's Origin with this origin.
	wsProxy := httputil.NewSingleHostReverseProxy(b)
	mux := http.NewServeMux()
	mux.Handle("/", viewer.Handler())
	mux.Handle(ws.Path, wsProxy)
	for _, p := range DirectusPaths {
		mux.Handle(p, dx)
	}
	return mux, nil
}

// Run serves the origin until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h, err := Handler(cfg)
	if err != nil {
		return err
	}
	ln := cfg.Listener
	if ln == nil {
		if ln, err = devauth.ListenLoopback(cfg.Addr); err != nil {
			return err
		}
	} else if err := devauth.CheckLoopback(ln.Addr().String()); err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	mode := "dev auth backend (demo users)"
	if cfg.DirectusURL != "" {
		mode = "Directus at " + cfg.DirectusURL
	}
	log.Info("dev origin serving", "url", "http://"+ln.Addr().String()+"/", "auth", mode)
	select {
	case err := <-errc:
		return fmt.Errorf("dev origin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx) // hijacked WebSockets are closed by the broadcaster's own shutdown
	return nil
}

// EventsFromDB lists the events table for devauth's GET /items/events.
func EventsFromDB(pool *pgxpool.Pool) func(context.Context) ([]devauth.Event, error) {
	return func(ctx context.Context) ([]devauth.Event, error) {
		rows, err := pool.Query(ctx, `SELECT id::text, coalesce(name, '') FROM events ORDER BY name, id`)
		if err != nil {
			if strings.Contains(err.Error(), "does not exist") {
				return []devauth.Event{}, nil // not seeded yet
			}
			return nil, err
		}
		defer rows.Close()
		out := []devauth.Event{}
		for rows.Next() {
			var e devauth.Event
			if err := rows.Scan(&e.ID, &e.Name); err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return out, rows.Err()
	}
}
