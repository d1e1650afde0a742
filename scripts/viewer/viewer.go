// Package viewer is the live viewer page of the dev stack: plain HTML, CSS
// and JavaScript embedded in the binary, no build step, nothing fetched from
// outside the page's own origin.
//
// The page talks to its origin exactly as the production single-page app
// does: POST /auth/login {"mode":"session"} (Directus sets the httpOnly
// directus_session_token cookie), GET /users/me, GET /items/events to pick an
// event, then the WebSocket /ws-live (contract v1) through the client
// library @trm-live/client (clients/js): subscribe, snapshot, positions,
// reconnect with backoff and resubscribe, back to the login form on close
// code 4401. So the origin serving Handler
// must also route /auth/*, /users/*, /items/* to Directus (or to the dev
// stand-in, scripts/devauth) and /ws-live to the broadcaster: the dev binary
// does this.
//
// For tests the page exposes its state as window.trmViewer.stats():
// connection, user, topic, devices (count), positions (received), rate
// (positions/s over the last 5 s), lastClose.
package viewer

// go:embed cannot reach outside this folder, so the page serves a copy of
// the client library, kept identical by TestClientLibraryCopy.
//go:generate cp ../../clients/js/index.js static/trm-live-client.js

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the page at "/" (index.html, viewer.js, viewer.css,
// trm-live-client.js).
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The page is tiny and changes with the binary: never cache it, so a
		// rebuilt dev binary is seen on reload.
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		files.ServeHTTP(w, r)
	})
}
