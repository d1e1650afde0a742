#!/usr/bin/env bash
# scripts/test.d/prometheus.sh — run by scripts/test after the Go tests:
# the operator kit's Prometheus files are valid and their alerts fire when
# they should.
#
#   promtool check config  deploy/prometheus/prometheus.yml, prometheus.dev.yml (and their rule files)
#   promtool check rules   deploy/prometheus/rules/*.yml
#   promtool test rules    deploy/prometheus/tests/*.test.yml
#
# promtool comes with Debian's prometheus package, installed when missing
# (as root). The e2e test TestPrometheusAlertsPersisterDown runs the same
# package's server against the real workers. Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT/deploy/prometheus"

command -v promtool >/dev/null || apt_install prometheus
promtool check config prometheus.yml prometheus.dev.yml
promtool check rules rules/*.yml
promtool test rules tests/*.test.yml
log "prometheus: config and rules valid, rule unit tests pass"
