package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"trm-live/scripts/devauth"
	"trm-live/scripts/devorigin"
	"trm-live/scripts/simulate"
)

// The dev origin: one loopback HTTP origin for the browser (the viewer at
// "/", /ws-live proxied to the broadcaster, Directus's paths served by the
// DEV-ONLY auth backend or proxied to the real Directus named by
// DIRECTUS_URL). Its address is DEV_HTTP_ADDR, default 127.0.0.1:8080 plus
// -http-port-offset.

// originPort is the origin's default port, before -http-port-offset.
const originPort = 8080

// DemoPassword is the password of every demo user of the dev auth backend.
const DemoPassword = "demo"

// AdminEmail is the dev auth backend's admin (follows every event).
const AdminEmail = "admin@trm-live.local"

// demoUsers are the users the simulator seeds (a member of the demo
// organization and an outsider), plus an admin, all with DemoPassword.
func demoUsers() []devauth.User {
	return []devauth.User{
		{ID: simulate.StableUUID("user:demo"), Email: simulate.DemoUserEmail, Password: DemoPassword},
		{ID: simulate.StableUUID("user:outsider"), Email: simulate.OutsiderEmail, Password: DemoPassword},
		{ID: simulate.StableUUID("user:admin"), Email: AdminEmail, Password: DemoPassword, Admin: true},
	}
}

func originAddr(offset int) string {
	if a := os.Getenv("DEV_HTTP_ADDR"); a != "" {
		return a
	}
	return fmt.Sprintf("127.0.0.1:%d", originPort+offset)
}

// directusURL is what authsvc calls: the real Directus when DIRECTUS_URL
// is set, else the dev origin's own auth backend.
func directusURL(offset int) string {
	if u := os.Getenv("DIRECTUS_URL"); u != "" {
		return u
	}
	return "http://" + originAddr(offset)
}

func runOrigin(ctx context.Context, log *slog.Logger, offset int) error {
	bport := 0
	for _, w := range workers {
		if w.name == "broadcaster" {
			bport = w.port + offset
		}
	}
	if bport == 0 {
		return fmt.Errorf("dev origin: no broadcaster worker")
	}
	cfg := devorigin.Config{
		Addr:           originAddr(offset),
		BroadcasterURL: fmt.Sprintf("http://127.0.0.1:%d", bport),
		DirectusURL:    os.Getenv("DIRECTUS_URL"),
		Logger:         log,
	}
	if cfg.DirectusURL == "" {
		var events func(context.Context) ([]devauth.Event, error)
		if dsn := os.Getenv("DATABASE_URL"); dsn != "" {
			pool, err := pgxpool.New(ctx, dsn)
			if err != nil {
				return fmt.Errorf("dev origin: DATABASE_URL: %w", err)
			}
			defer pool.Close()
			events = devorigin.EventsFromDB(pool)
		}
		cfg.Auth = devauth.New(devauth.Config{Users: demoUsers(), Events: events})
		log.Warn("DEV-ONLY auth backend: demo users, plain-text passwords, loopback only",
			"login", simulate.DemoUserEmail+" / "+DemoPassword, "admin", AdminEmail+" / "+DemoPassword)
	}
	return devorigin.Run(ctx, cfg)
}
