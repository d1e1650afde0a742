package verify

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"trm-live/testkit"
)

// TestDockerfile: every file the worker image copies exists, the build
// step is deploy/docker/build.sh (which scripts/test.d/deploy.sh runs), and
// the final image is non-root with a health check on the worker's port.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	root := testkit.RepoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(raw)
	for _, m := range regexp.MustCompile(`(?m)^COPY\s+(?:--[a-z]+=\S+\s+)*(.+)$`).FindAllStringSubmatch(df, -1) {
		if strings.Contains(m[0], "--from=") {
			continue
		}
		parts := strings.Fields(m[1])
		for _, src := range parts[:len(parts)-1] {
			if src == "." {
				continue
			}
			if _, err := os.Stat(filepath.Join(root, src)); err != nil {
				t.Errorf("Dockerfile copies %s: %v", src, err)
			}
		}
	}
	// Every worker module's go.mod and go.sum are copied for the download layer.
	for _, w := range devWorkers {
		if !strings.Contains(df, "COPY "+w+"/go.mod "+w+"/go.sum "+w+"/") {
			t.Errorf("Dockerfile does not copy %s/go.mod and go.sum before downloading modules", w)
		}
		// ... and so is every module it replaces with a local path: GOWORK=off
		// cannot load the worker's module graph without that go.mod.
		gomod, err := os.ReadFile(filepath.Join(root, w, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range regexp.MustCompile(`(?m)^replace\s+\S+\s+=>\s+\.\./(\S+)\s*$`).FindAllStringSubmatch(string(gomod), -1) {
			dep := r[1]
			if !strings.Contains(df, "COPY "+dep+"/go.mod "+dep+"/go.sum "+dep+"/") {
				t.Errorf("Dockerfile does not copy %s/go.mod and go.sum, which %s/go.mod replaces with a local path", dep, w)
			}
			if !regexp.MustCompile(`for m in [^;]*\b` + regexp.QuoteMeta(dep) + `\b`).MatchString(df) {
				t.Errorf("Dockerfile does not download %s's modules, which %s/go.mod replaces with a local path", dep, w)
			}
		}
	}
	for _, want := range []string{
		`deploy/docker/build.sh "$WORKER" /out "$VERSION" "$REVISION"`,
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"USER nonroot:nonroot",
		"ENV HTTP_ADDR=:8080", // serviceEnv assumes it; the healthcheck reads it
		`HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["/app/healthcheck"]`,
		`ENTRYPOINT ["/app/worker"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	ignore, err := os.ReadFile(filepath.Join(root, "deploy", "docker", "Dockerfile.dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{".git", ".data", "deploy/env/*.env"} {
		if !strings.Contains(string(ignore), want+"\n") {
			t.Errorf("Dockerfile.dockerignore does not exclude %s", want)
		}
	}
}
