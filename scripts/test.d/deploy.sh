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
# Exits non-zero on the first failure.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"

command -v docker-compose >/dev/null || apt_install docker-compose
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
log "deploy: compose files valid, images' binaries build"
