package testkit

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// EnvDatabaseURL names the shared PostgreSQL that scripts/test starts: a DSN
// of a superuser on its maintenance database.
const EnvDatabaseURL = "TRM_TEST_DATABASE_URL"

// Postgres creates a fresh, empty database on the shared test PostgreSQL and
// returns its DSN. The database is dropped at cleanup.
func Postgres(tb testing.TB) string {
	tb.Helper()
	return createDatabase(tb, mustEnv(tb, EnvDatabaseURL, "a running PostgreSQL superuser DSN"))
}

func createDatabase(tb testing.TB, adminDSN string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		tb.Fatalf("testkit: connect %s: %v (is scripts/test's PostgreSQL running?)", EnvDatabaseURL, err)
	}
	defer conn.Close(ctx)
	name := strings.ToLower(Unique("trmtest"))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("testkit: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, adminDSN)
		if err != nil {
			tb.Logf("testkit: drop database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			tb.Logf("testkit: drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(adminDSN)
	if err != nil {
		tb.Fatalf("testkit: %s must be a postgres:// URL: %v", EnvDatabaseURL, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Pool opens a pgx pool on dsn, closed at cleanup.
func Pool(tb testing.TB, dsn string) *pgxpool.Pool {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	if err := pool.Ping(ctx); err != nil {
		tb.Fatalf("testkit: ping %s: %v", dsn, err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// SeedDirectusTables creates the Directus-side tables (organizations, events,
// organization_users, event_devices and the directus_* stand-ins) in dsn from
// deploy/seed/directus-standin.sql, the same file the simulator uses.
func SeedDirectusTables(tb testing.TB, dsn string) {
	tb.Helper()
	sql, err := os.ReadFile(filepath.Join(RepoRoot(tb), "deploy", "seed", "directus-standin.sql"))
	if err != nil {
		tb.Fatalf("testkit: read seed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, string(sql)); err != nil {
		tb.Fatalf("testkit: apply directus-standin.sql: %v", err)
	}
}

// PostgresServer is a private PostgreSQL cluster for one test, for tests
// that stop and restart the database. It keeps its port and data across
// Stop and Start.
type PostgresServer struct {
	tb   testing.TB
	Port int
	Dir  string
	// AdminURL is a superuser DSN on the maintenance database.
	AdminURL string
	bin      string
	running  bool
}

// StartPostgres runs initdb into a temporary folder (as the postgres user
// when the test runs as root, since initdb refuses root) and starts the
// server on a free loopback port. It is stopped and removed at cleanup.
func StartPostgres(tb testing.TB) *PostgresServer {
	tb.Helper()
	bin := pgBinDir(tb)
	dir, err := os.MkdirTemp("", "trm-pg-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	p := &PostgresServer{tb: tb, Port: freePort(tb), Dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		pu, err := user.Lookup("postgres")
		if err != nil {
			tb.Fatal("testkit: running as root and there is no postgres user: install PostgreSQL's server package (scripts/test does)")
		}
		uid, _ := strconv.Atoi(pu.Uid)
		gid, _ := strconv.Atoi(pu.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			tb.Fatal(err)
		}
	}
	if out, err := p.pgCmd("initdb", "-D", p.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync").CombinedOutput(); err != nil {
		tb.Fatalf("testkit: initdb: %v\n%s", err, out)
	}
	p.AdminURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
	p.Start()
	tb.Cleanup(p.Stop)
	return p
}

// NewDatabase creates a fresh database on this server and returns its DSN.
func (p *PostgresServer) NewDatabase(tb testing.TB) string {
	tb.Helper()
	return createDatabase(tb, p.AdminURL)
}

func (p *PostgresServer) data() string { return filepath.Join(p.Dir, "data") }

func (p *PostgresServer) pgCmd(name string, args ...string) *exec.Cmd {
	path := filepath.Join(p.bin, name)
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	return exec.Command(path, args...)
}

// EnvPGOpts names extra server options for every PostgreSQL the tests
// start, appended to pg_ctl -o as scripts/lib.sh start_pg does, e.g.
// "-c shared_preload_libraries=timescaledb".
const EnvPGOpts = "TRM_PG_OPTS"

// Start starts the server and waits until it accepts connections, with
// the options of TRM_PG_OPTS added.
func (p *PostgresServer) Start() {
	p.tb.Helper()
	if p.running {
		return
	}
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -k %s -c fsync=off -c full_page_writes=off", p.Port, p.Dir)
	if extra := os.Getenv(EnvPGOpts); extra != "" {
		opts += " " + extra
	}
	if out, err := p.pgCmd("pg_ctl", "-D", p.data(), "-l", filepath.Join(p.Dir, "pg.log"), "-w", "-t", "30", "-o", opts, "start").CombinedOutput(); err != nil {
		p.tb.Fatalf("testkit: pg_ctl start: %v\n%s", err, out)
	}
	p.running = true
}

// Stop stops the server (fast mode: connections are cut at once). Safe to
// call twice.
func (p *PostgresServer) Stop() {
	if !p.running {
		return
	}
	if out, err := p.pgCmd("pg_ctl", "-D", p.data(), "-m", "fast", "-w", "-t", "30", "stop").CombinedOutput(); err != nil {
		p.tb.Logf("testkit: pg_ctl stop: %v\n%s", err, out)
	}
	p.running = false
}

func pgBinDir(tb testing.TB) string {
	tb.Helper()
	if d := os.Getenv("TRM_PG_BIN"); d != "" {
		return d
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(matches) > 0 {
		return filepath.Dir(matches[len(matches)-1])
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		return filepath.Dir(p)
	}
	tb.Fatal("testkit: no PostgreSQL server binaries (pg_ctl): install PostgreSQL 15 or set TRM_PG_BIN")
	return ""
}
