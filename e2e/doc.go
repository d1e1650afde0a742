// Package e2e holds the end-to-end tests of trm-live; it has no code of its
// own outside _test.go files.
//
// The tests build the workers' own cmd/ binaries (the same binaries stage and
// prod run) plus the dev binary and the race simulator, and run them as
// separate processes against a nats-server on loopback, the Redis and
// PostgreSQL that scripts/test starts, and a real Directus that
// scripts/test installs and starts (scripts/directus.sh). They drive
// /ws-live with a WebSocket client as a browser would, with real
// directus_session_token cookies, and the viewer page in headless Chromium.
// docs/e2e.md lists what each test proves and how to run one alone.
//
// Settings (all set by scripts/test; a missing one fails the test with an
// actionable message, nothing skips): TRM_TEST_REDIS_URL,
// TRM_TEST_DATABASE_URL, TRM_TEST_DIRECTUS_URL,
// TRM_TEST_DIRECTUS_ADMIN_EMAIL, TRM_TEST_DIRECTUS_ADMIN_PASSWORD,
// TRM_TEST_DIRECTUS_DATABASE_URL. TRM_E2E_ARTIFACTS names the folder for
// screenshots and process logs (default .data/e2e under the repository).
package e2e
