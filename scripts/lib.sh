# shellcheck shell=bash
# Shared by scripts/dev, scripts/test and scripts/bench: install what is
# missing and start Redis and PostgreSQL on 127.0.0.1, data under .data/.
# Source it; it defines functions only.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="/usr/local/go/bin:$PATH"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# apt_install PKG... installs Debian packages when running as root, or says
# exactly what to install otherwise.
apt_install() {
	if [ "$(id -u)" -ne 0 ]; then
		die "missing: $* — install with: sudo apt-get install -y $*"
	fi
	log "installing Debian packages: $*"
	if [ -z "${TRM_APT_UPDATED:-}" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
		export TRM_APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}

# pg_bin prints the PostgreSQL server binary folder.
pg_bin() {
	local d
	for d in /usr/lib/postgresql/*/bin; do
		if [ -x "$d/pg_ctl" ]; then echo "$d"; return; fi
	done
	return 1
}

ensure_tools() {
	command -v go >/dev/null || die "Go is not installed (need Go >= 1.26 at /usr/local/go or on PATH)"
	local missing=()
	command -v redis-server >/dev/null || missing+=(redis-server)
	pg_bin >/dev/null || missing+=(postgresql-15)
	command -v psql >/dev/null || missing+=(postgresql-client-15)
	command -v runuser >/dev/null || missing+=(util-linux)
	if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
	pg_bin >/dev/null || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
	export PATH="$(pg_bin):$PATH"
}

# port_free PORT: true when nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port BASE: the first free port from BASE on.
pick_port() {
	local p=$1
	while ! port_free "$p"; do p=$((p + 1)); done
	echo "$p"
}

as_postgres() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# start_redis DIR PORT: a redis-server on 127.0.0.1:PORT, data in DIR.
start_redis() {
	local dir=$1 port=$2
	mkdir -p "$dir"
	redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
		--pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
		--appendonly yes --save "" >/dev/null || die "redis-server failed to start; see $dir/redis.log"
	local i
	for i in $(seq 1 100); do
		redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "redis-server on port $port did not answer; see $dir/redis.log"
}

stop_redis() {
	local dir=$1
	[ -f "$dir/redis.pid" ] || return 0
	kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
	rm -f "$dir/redis.pid"
}

# start_pg DIR PORT [fast]: a PostgreSQL cluster in DIR/data on
# 127.0.0.1:PORT, trust auth for the postgres user on loopback only. With
# "fast", fsync is off (tests and benchmarks that compare against a raw COPY
# on the same server). TRM_PG_OPTS, when set, is appended to the server
# options, e.g. TRM_PG_OPTS='-c shared_preload_libraries=timescaledb' to run
# the suite against TimescaleDB where its package is installed.
start_pg() {
	local dir=$1 port=$2 mode=${3:-}
	mkdir -p "$dir"
	chmod 755 "$dir"
	if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
	# Every parent must be traversable by the postgres user.
	local p=$dir
	while [ "$p" != "/" ]; do p=$(dirname "$p"); chmod o+x "$p" 2>/dev/null || true; done
	if [ ! -f "$dir/data/PG_VERSION" ]; then
		as_postgres initdb -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
			|| die "initdb failed; see $dir/initdb.log"
	fi
	local opts="-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=300"
	if [ "$mode" = fast ]; then opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"; fi
	if [ -n "${TRM_PG_OPTS:-}" ]; then opts="$opts $TRM_PG_OPTS"; fi
	as_postgres pg_ctl -D "$dir/data" -l "$dir/pg.log" -w -t 60 -o "$opts" start >/dev/null \
		|| die "PostgreSQL failed to start; see $dir/pg.log"
}

stop_pg() {
	local dir=$1
	[ -f "$dir/data/postmaster.pid" ] || return 0
	as_postgres pg_ctl -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

# go_modules prints every module directory of the workspace.
go_modules() { (cd "$ROOT" && go list -m -f '{{.Dir}}'); }
