package migrate

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// PlayTimescale makes m read the given TimescaleDB facts instead of the
// server's, and run probeSQL (when not empty) on the probe connection
// instead of CREATE EXTENSION: the tests play servers this machine lacks.
func PlayTimescale(m *Migrator, available, installed, preloaded bool, probeSQL string) {
	m.tsFacts = func(context.Context, *pgx.Conn) (tsFacts, error) {
		return tsFacts{available: available, installed: installed, preloaded: preloaded}, nil
	}
	if probeSQL != "" {
		m.createSQL = probeSQL
	}
}
