#!/usr/bin/env bash
# scripts/test.d/soak.sh — run by scripts/test after the Go tests (docs/soak.md):
#
# 1. a 2-minute race-day soak with a fixed seed against the Directus
#    stand-in. Seed 1 deals every fault kind once in that window: DROP
#    TABLE, Directus 5xx and hang, kill -9 of a worker and of a NATS node,
#    PostgreSQL and Redis restarts, a logout. About 4 minutes with the build.
# 2. a 1-minute soak against the real Directus scripts/test started
#    (TRM_TEST_DIRECTUS_URL, TRM_TEST_DIRECTUS_ADMIN_EMAIL,
#    TRM_TEST_DIRECTUS_ADMIN_PASSWORD). Seed 20 deals, in its first 20 s of
#    faults, a Directus hang and a 5xx (through the soak's proxy), a Redis
#    restart and a logout through the real POST /auth/logout, then DROP
#    TABLE and a NATS node killed. About 3 minutes on a loaded 2-core machine
#    (most of it Directus hashing the 10 viewers' passwords). Without those settings
#    this part FAILS: scripts/test always sets them.
#
# Fails on any model violation. Each soak starts its own Redis, PostgreSQL
# and NATS cluster (data under .data/test/soak and .data/test/soak-directus);
# the real Directus keeps its own database, which no fault touches.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

rc=0
"$ROOT/scripts/soak" -seed 1 -duration 2m -warmup 20s -quiet 15s -gap 3s -drain 2m \
	-data "$ROOT/.data/test/soak" || rc=1

missing=()
for v in TRM_TEST_DIRECTUS_URL TRM_TEST_DIRECTUS_ADMIN_EMAIL TRM_TEST_DIRECTUS_ADMIN_PASSWORD; do
	[ -n "${!v:-}" ] || missing+=("$v")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "error: soak against a real Directus: ${missing[*]} not set (scripts/test exports them after starting Directus with scripts/directus.sh): FAILED"
	exit 1
fi
SOAK_DIRECTUS_ADMIN_EMAIL="$TRM_TEST_DIRECTUS_ADMIN_EMAIL" SOAK_DIRECTUS_ADMIN_PASSWORD="$TRM_TEST_DIRECTUS_ADMIN_PASSWORD" \
	"$ROOT/scripts/soak" -directus "$TRM_TEST_DIRECTUS_URL" -seed 20 -duration 1m -warmup 15s -quiet 10s -gap 2s -drain 2m -viewers 10 \
	-data "$ROOT/.data/test/soak-directus" || rc=1
exit "$rc"
