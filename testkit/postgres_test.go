package testkit

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TRM_PG_OPTS reaches the private server's options (as it reaches
// scripts/lib.sh start_pg), so a suite can run against a server that
// preloads TimescaleDB.
func TestPrivatePostgresTakesServerOptions(t *testing.T) {
	t.Setenv(EnvPGOpts, strings.TrimSpace(os.Getenv(EnvPGOpts)+" -c work_mem=7MB"))
	p := StartPostgres(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, p.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var v string
	if err := c.QueryRow(ctx, "SHOW work_mem").Scan(&v); err != nil || v != "7MB" {
		t.Fatalf("work_mem %q %v, want 7MB from %s", v, err, EnvPGOpts)
	}
}
