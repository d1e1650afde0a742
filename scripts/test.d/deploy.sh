#!/usr/bin/env bash
# scripts/test.d/deploy.sh — run by scripts/test after the Go tests: checks
# the deployment files the Go tests of deploy/verify cannot.
#
# 1. Each compose file is valid for Docker Compose, with the committed
#    examples of its env files (secrets filled with placeholders):
#    `docker-compose config -q` of Debian's docker-compose package (1.29)
#    parses, interpolates and validates against the Compose schema without
#    a container engine. Installed with apt-get when missing (as root).
# 2. The image build step (deploy/docker/build.sh, the Dockerfile's RUN)
#    builds every worker and the healthcheck as static binaries.
# 3. Each worker binary so built carries the version and revision build.sh
#    stamps: started with its dependencies unreachable (it keeps running,
#    not ready), its /metrics shows trm_build_info{revision=<git HEAD>,
#    version="test"} 1, and `worker -version` prints "<worker> test
#    (revision <git HEAD>)" and exits 0.
# Exits non-zero on the first failure.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"

command -v docker-compose >/dev/null || apt_install docker-compose
command -v curl >/dev/null || apt_install curl
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A copy of deploy/ with every env/*.env.example filled in as an operator
# would, so env_file references resolve exactly as in a real deployment.
cp -r deploy "$tmp/deploy"
for ex in "$tmp"/deploy/env/*.env.example; do
	f=${ex%.example}
	sed -E 's/^([A-Z0-9_]*(PASSWORD|KEY|SECRET))=$/\1=test-\1/' "$ex" >"$f"
done

check_compose() {
	local file=$1 envfile=$2
	log "docker-compose config: deploy/$file (env $envfile)"
	(cd "$tmp/deploy" && docker-compose --env-file "env/$envfile" -f "$file" config -q) \
		|| die "deploy/$file is not valid for Docker Compose"
	# A missing required variable must stop compose (no silent defaults).
	if (cd "$tmp/deploy" && docker-compose --env-file /dev/null -f "$file" config -q) >/dev/null 2>&1; then
		die "deploy/$file accepted an empty environment: its required \${VAR:?} checks are missing"
	fi
}
check_compose compose.yml compose.env
check_compose compose.dev.yml dev.env

workers="bridge persister authsvc broadcaster"
[ -d scripts/cmd/trm-dev ] && workers="$workers trm-dev"
for w in $workers; do
	log "image build step: deploy/docker/build.sh $w"
	deploy/docker/build.sh "$w" "$tmp/bin-$w" test >/dev/null || die "build.sh $w failed"
	for b in worker healthcheck; do
		file "$tmp/bin-$w/$b" 2>/dev/null | grep -q 'statically linked' \
			|| go version -m "$tmp/bin-$w/$b" | grep -q 'CGO_ENABLED=0' \
			|| die "$w: $b is not a static binary"
	done
done
# build_info WORKER ENV...: runs the worker binary with ENV (dependencies on
# port 1: refused) and checks its stamped trm_build_info.
revision=$(git rev-parse HEAD 2>/dev/null || true)
build_info() {
	local w=$1 port pid line="" i
	shift
	port=$(pick_port 19380)
	env -i PATH="$PATH" HTTP_ADDR="127.0.0.1:$port" "$@" "$tmp/bin-$w/worker" >"$tmp/$w.log" 2>&1 &
	pid=$!
	for i in $(seq 1 150); do
		line=$(curl -fsS --max-time 2 "http://127.0.0.1:$port/metrics" 2>/dev/null | grep '^trm_build_info' || true)
		[ -n "$line" ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	case "$line" in
	"trm_build_info{revision=\"${revision:-unknown}\",version=\"test\"} 1") log "$w: $line" ;;
	*) cat "$tmp/$w.log" >&2; die "$w: /metrics has '${line:-no trm_build_info}', want version test, revision ${revision:-unknown}" ;;
	esac
}
down=(NATS_URL=nats://127.0.0.1:1 "DATABASE_URL=postgres://nobody@127.0.0.1:1/none?sslmode=disable")
build_info bridge "${down[@]}" REDIS_URL=redis://127.0.0.1:1/0
build_info persister "${down[@]}"
build_info authsvc "${down[@]}" DIRECTUS_URL=http://127.0.0.1:1
build_info broadcaster "${down[@]}"
# -version prints the same stamp and exits 0 before reading any setting:
# with an empty environment authsvc lacks its required URLs and the others
# would wait for servers nobody runs here.
for w in bridge persister authsvc broadcaster; do
	want="$w test (revision ${revision:-unknown})"
	got=$(env -i PATH="$PATH" timeout 20 "$tmp/bin-$w/worker" -version) || die "$w -version exited non-zero"
	[ "$got" = "$want" ] || die "$w -version printed '$got', want '$want'"
	log "$w -version: $got"
done
log "deploy: compose files valid, images' binaries build and carry their build info and answer -version"
