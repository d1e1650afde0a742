package directus

import (
	"context"
	"errors"
	"go/parser"
	gotoken "go/token"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"trm-live/testkit"
)

func serve(t *testing.T, h http.Handler, method, path, body, cookie string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if cookie != "" {
		r.AddCookie(&http.Cookie{Name: CookieName, Value: cookie})
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func cookieOf(w *httptest.ResponseRecorder) string {
	for _, c := range w.Result().Cookies() {
		if c.Name == CookieName {
			return c.Value
		}
	}
	return ""
}

// TestHandlerWithoutTB uses the fake as the dev tooling does: New, no
// testing.TB, no listener, its own clock, events from a function, and no
// request kept beyond the per-path counts.
func TestHandlerWithoutTB(t *testing.T) {
	t.Parallel()
	now := time.Now()
	events := []Event{{ID: NewID(), Name: "Le Mans"}}
	var eventsErr error
	s := New(Config{
		Users:  []User{{Email: "demo@example.com", Password: "pw"}},
		Events: func(context.Context) ([]Event, error) { return events, eventsErr },
		Now:    func() time.Time { return now },
	})
	if _, ok := s.Session("demo@example.com", "nope"); ok {
		t.Fatal("Session with a wrong password")
	}
	ck, ok := s.Session("DEMO@example.com", "pw")
	if !ok {
		t.Fatal("Session refused")
	}
	if w := serve(t, s, "GET", "/items/events?fields=id,name", "", ck); w.Code != 200 ||
		w.Body.String() != `{"data":[{"id":"`+events[0].ID+`","name":"Le Mans"}]}`+"\n" {
		t.Fatalf("events: %d %s", w.Code, w.Body)
	}
	if w := serve(t, s, "GET", "/items/events", "", ""); w.Code != 403 || !strings.Contains(w.Body.String(), `"FORBIDDEN"`) {
		t.Fatalf("events without a credential: %d %s", w.Code, w.Body)
	}
	eventsErr = errors.New("db down")
	if w := serve(t, s, "GET", "/items/events", "", ck); w.Code != 503 {
		t.Fatalf("events failing: %d %s", w.Code, w.Body)
	}

	// Refresh keeps the session: logging the refreshed cookie out revokes
	// the first one too.
	if w := serve(t, s, "POST", "/auth/refresh", "", ck); w.Code != 400 {
		t.Fatalf("refresh without mode session: %d %s", w.Code, w.Body)
	}
	w := serve(t, s, "POST", "/auth/refresh", `{"mode":"session"}`, ck)
	refreshed := cookieOf(w)
	if w.Code != 200 || refreshed == "" {
		t.Fatalf("refresh: %d %s", w.Code, w.Body)
	}
	if w := serve(t, s, "POST", "/auth/logout", `{"mode":"session"}`, refreshed); w.Code != 204 {
		t.Fatalf("logout: %d %s", w.Code, w.Body)
	}
	if w := serve(t, s, "GET", "/users/me", "", ck); w.Code != 401 {
		t.Fatalf("first cookie after logout of the refreshed one: %d", w.Code)
	}

	// The clock decides expiry.
	ck, _ = s.Session("demo@example.com", "pw")
	now = now.Add(SessionTTL + time.Second)
	if w := serve(t, s, "GET", "/users/me", "", ck); w.Code != 401 || !strings.Contains(w.Body.String(), "TOKEN_EXPIRED") {
		t.Fatalf("expired: %d %s", w.Code, w.Body)
	}

	if n := s.Calls("/users/me"); n != 2 {
		t.Fatalf("Calls(/users/me) = %d, want 2", n)
	}
	if n := s.Calls(""); n != 8 {
		t.Fatalf("Calls() = %d, want 8", n)
	}
	if r := s.Requests(""); len(r) != 0 {
		t.Fatalf("a fake without Record kept %d requests", len(r))
	}

	if err := s.Listen(""); err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	resp, err := http.Get(s.URL + "/server/ping")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("Listen: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestNoTestingImport: the fake and benchenv link into the dev binary and
// the benchmark programs, so they must not import package testing; and no
// code of the workers, contract or deploy outside _test.go files and the
// workers' benchmark programs (<worker>/bench) imports testkit
// (docs/DECISIONS.md, decision 12).
func TestNoTestingImport(t *testing.T) {
	t.Parallel()
	root := testkit.RepoRoot(t)
	fset := gotoken.NewFileSet()
	imports := func(path string) []string {
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, im := range f.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			out = append(out, p)
		}
		return out
	}
	files, _ := filepath.Glob(filepath.Join(root, "testkit", "directus", "*.go"))
	bench, _ := filepath.Glob(filepath.Join(root, "testkit", "benchenv", "*.go"))
	if len(files) == 0 || len(bench) == 0 {
		t.Fatal("no Go file in testkit/directus or testkit/benchenv")
	}
	for _, f := range append(files, bench...) {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		for _, p := range imports(f) {
			if p == "testing" || strings.HasPrefix(p, "testing/") {
				t.Errorf("%s imports %s", f, p)
			}
		}
	}
	for _, mod := range []string{"bridge", "persister", "authsvc", "broadcaster", "contract", "deploy"} {
		err := filepath.WalkDir(filepath.Join(root, mod), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			if d.IsDir() && path == filepath.Join(root, mod, "bench") {
				return filepath.SkipDir // benchmark programs, built on testkit
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			for _, p := range imports(path) {
				if p == "trm-live/testkit" || strings.HasPrefix(p, "trm-live/testkit/") {
					t.Errorf("%s imports %s outside a test", path, p)
				}
			}
			return nil
		})
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
}
