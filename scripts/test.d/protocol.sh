#!/usr/bin/env bash
# scripts/test.d/protocol.sh — run by scripts/test after the Go tests: the
# /ws-live contract cannot drift from docs/asyncapi.yaml.
#
# deploy/verify/protocol/check.mjs validates the document with the AsyncAPI
# parser, then every golden frame of contract/testdata/ws (and the position
# goldens) against the message schemas with ajv: each frame must validate
# against exactly one message of its "type", a frame no message describes
# fails, and a set of deliberately wrong frames must be rejected.
# Node and npm come from Debian's packages (installed when missing, as
# root); the parser and ajv from the lockfile (npm ci, offline when the
# npm cache already has them). Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT/deploy/verify/protocol"

command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
log "npm ci (deploy/verify/protocol)"
npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error >/dev/null
node check.mjs "$ROOT"
