#!/usr/bin/env bash
# deploy/docker/build.sh WORKER OUTDIR [VERSION [REVISION]] — builds one
# worker image's two static binaries into OUTDIR: `worker` (the worker's
# cmd) and `healthcheck` (deploy/healthcheck). Run from anywhere; it finds
# the repository root from its own path.
#
# VERSION (default dev) and REVISION (default: git rev-parse HEAD when the
# tree is a git checkout, else empty) are stamped into main.version and
# main.revision, which each worker exports as trm_build_info{version,revision}.
# An empty REVISION leaves the one the Go toolchain records (vcs.revision),
# or "unknown".
#
# The Dockerfile runs it in its build stage, and scripts/test.d/deploy.sh
# runs it on this machine for every worker, so the image build is tested
# without a container engine.
#
#   bridge, persister, authsvc, broadcaster: GOWORK=off build of the
#     worker's own module (its go.mod replaces trm-live/contract with
#     ../contract), so the image proves the module builds alone.
#   trm-dev: the dev binary (scripts/cmd/trm-dev, embedded NATS and every
#     worker in one process), built in the workspace (go.work).
set -euo pipefail
worker=${1:?usage: build.sh WORKER OUTDIR [VERSION [REVISION]]}
out=${2:?usage: build.sh WORKER OUTDIR [VERSION [REVISION]]}
version=${3:-dev}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
revision=${4:-$(git -C "$root" rev-parse HEAD 2>/dev/null || true)}
mkdir -p "$out"
out="$(cd "$out" && pwd)"

export CGO_ENABLED=0
ldflags="-s -w -X main.version=$version"
[ -z "$revision" ] || ldflags="$ldflags -X main.revision=$revision"
case "$worker" in
bridge | persister | authsvc | broadcaster)
	(cd "$root/$worker" && GOWORK=off go build -trimpath -ldflags "$ldflags" -o "$out/worker" "./cmd/$worker")
	;;
trm-dev)
	(cd "$root/scripts" && go build -trimpath -ldflags "$ldflags" -o "$out/worker" ./cmd/trm-dev)
	;;
*)
	echo "build.sh: unknown WORKER '$worker': want bridge, persister, authsvc, broadcaster or trm-dev" >&2
	exit 2
	;;
esac
(cd "$root/deploy/healthcheck" && GOWORK=off go build -trimpath -ldflags "-s -w" -o "$out/healthcheck" .)
