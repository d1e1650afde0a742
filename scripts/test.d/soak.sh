#!/usr/bin/env bash
# scripts/test.d/soak.sh — run by scripts/test after the Go tests: a
# 2-minute race-day soak with a fixed seed (docs/soak.md). Seed 1 deals
# every fault kind once in that window: DROP TABLE, Directus 5xx and hang,
# kill -9 of a worker and of a NATS node, PostgreSQL and Redis restarts, a
# logout. Fails on any model violation. It starts its own Redis, PostgreSQL
# and NATS cluster (data under .data/test/soak), so it needs none of the
# servers scripts/test started; it takes about 4 minutes with the build.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
exec "$ROOT/scripts/soak" -seed 1 -duration 2m -warmup 20s -quiet 15s -gap 3s -drain 2m \
	-data "$ROOT/.data/test/soak"
