#!/usr/bin/env bash
# scripts/test.d/clientjs.sh — run by scripts/test after the Go tests: the
# node tests of @trm-live/client (clients/js) with node's own test runner:
# the pure logic (backoff, merge by ts, the state machine, replay, rewind)
# against a scripted fake WebSocket and the contract's golden frames, the
# package metadata (version = the repository's VERSION), the viewer's copy
# of the library, and the TypeScript declarations with tsc --noEmit.
# typescript, the package's only (dev) dependency, is installed with
# `npm ci` from package-lock.json when node_modules is missing or stale.
# The same library runs in headless Chromium in the e2e module
# (TestClientLibraryInChromium). Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT/clients/js"

command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || die "clients/js needs Node >= 18 (node --test), found $(node --version)"

if ! cmp -s package-lock.json node_modules/.trm-lock 2>/dev/null; then
	log "clients/js: npm ci (typescript for the declarations check)"
	npm ci --no-audit --no-fund --loglevel=error >/dev/null || die "clients/js: npm ci failed"
	cp package-lock.json node_modules/.trm-lock
fi
log "clients/js: node --test"
node --test test/*.test.js
