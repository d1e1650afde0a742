package benchenv

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"
)

// The environment scripts/bench sets for a benchmark program.
const (
	EnvRedisURL    = "BENCH_REDIS_URL"
	EnvDatabaseURL = "BENCH_DATABASE_URL" // a superuser DSN on the maintenance database
	EnvDataDir     = "BENCH_DATA_DIR"     // the benchmark's own folder
)

// Servers are the servers scripts/bench started for a benchmark. A
// benchmark's Config embeds them.
type Servers struct {
	RedisURL    string // EnvRedisURL
	DatabaseURL string // EnvDatabaseURL: a superuser DSN, see FreshDatabase
	DataDir     string // EnvDataDir; the temporary directory when unset
}

// LoadServers reads the servers from getenv; each name in need (EnvRedisURL,
// EnvDatabaseURL) must be set, or the error says to run the benchmark named
// bench through scripts/bench.
func LoadServers(getenv func(string) string, bench string, need ...string) (Servers, error) {
	s := Servers{RedisURL: getenv(EnvRedisURL), DatabaseURL: getenv(EnvDatabaseURL), DataDir: getenv(EnvDataDir)}
	for _, name := range need {
		if getenv(name) == "" {
			return Servers{}, fmt.Errorf("%s is not set: run through scripts/bench %s", name, bench)
		}
	}
	if s.DataDir == "" {
		s.DataDir = os.TempDir()
	}
	return s, nil
}

// FreshDatabase drops the database name (closing its connections) and
// creates it empty on the PostgreSQL of adminDSN, a superuser DSN, and
// returns the DSN of the new database: adminDSN with its path replaced.
func FreshDatabase(ctx context.Context, adminDSN, name string) (string, error) {
	u, err := url.Parse(adminDSN)
	if err != nil {
		return "", fmt.Errorf("database URL: %w", err)
	}
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return "", fmt.Errorf("connect %s: %w", EnvDatabaseURL, err)
	}
	defer conn.Close(ctx)
	id := pgx.Identifier{name}.Sanitize()
	for _, q := range []string{"DROP DATABASE IF EXISTS " + id + " WITH (FORCE)", "CREATE DATABASE " + id} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return "", err
		}
	}
	u.Path = "/" + name
	return u.String(), nil
}

// SeedDirectusTables applies deploy/seed/directus-standin.sql of the
// repository at root to dsn: the Directus-side tables (organizations,
// events, event_devices, ...) the workers read.
func SeedDirectusTables(ctx context.Context, dsn, root string) error {
	seed, err := os.ReadFile(filepath.Join(root, "deploy", "seed", "directus-standin.sql"))
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, string(seed)); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}
