package viewer

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientLibraryCopy: the page's trm-live-client.js is byte for byte the
// client library of clients/js (refresh it with `go generate ./viewer`).
func TestClientLibraryCopy(t *testing.T) {
	lib, err := os.ReadFile(filepath.Join("..", "..", "clients", "js", "index.js"))
	if err != nil {
		t.Fatal(err)
	}
	copied, err := static.ReadFile("static/trm-live-client.js")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(lib, copied) {
		t.Fatal("scripts/viewer/static/trm-live-client.js differs from clients/js/index.js: run `go generate ./viewer` in scripts/")
	}
}

// TestServesClientLibrary: the page loads viewer.js as a module, which
// imports the library, and both are served as JavaScript.
func TestServesClientLibrary(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	get := func(path string) (string, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		return resp.Header.Get("Content-Type"), string(b)
	}
	if _, page := get("/"); !strings.Contains(page, `<script type="module" src="viewer.js">`) {
		t.Error("index.html does not load viewer.js as a module")
	}
	if _, js := get("/viewer.js"); !strings.Contains(js, `import { LiveClient } from "./trm-live-client.js"`) {
		t.Error("viewer.js does not import the client library")
	}
	ct, lib := get("/trm-live-client.js")
	if !strings.HasPrefix(ct, "text/javascript") || !strings.Contains(lib, "export class LiveClient") {
		t.Errorf("/trm-live-client.js: %q, library missing", ct)
	}
}
