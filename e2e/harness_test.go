package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"trm-live/testkit"
)

// env returns a required setting, failing with what to do when missing.
func env(tb testing.TB, name, what string) string {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		tb.Fatalf("e2e: %s is not set: it must be %s. Run the suite through scripts/test, which installs and starts Redis, PostgreSQL and a real Directus (scripts/directus.sh) and sets it; to run this module alone, start scripts/directus.sh up and export the variables it prints (docs/e2e.md).", name, what)
	}
	return v
}

// directusEnv is the real Directus scripts/test started.
type directusEnv struct {
	URL, AdminEmail, AdminPassword, DatabaseURL string
}

func realDirectus(tb testing.TB) directusEnv {
	tb.Helper()
	return directusEnv{
		URL:           env(tb, "TRM_TEST_DIRECTUS_URL", "the URL of a real Directus (http://127.0.0.1:<port>)"),
		AdminEmail:    env(tb, "TRM_TEST_DIRECTUS_ADMIN_EMAIL", "that Directus's admin email"),
		AdminPassword: env(tb, "TRM_TEST_DIRECTUS_ADMIN_PASSWORD", "that Directus's admin password"),
		DatabaseURL:   env(tb, "TRM_TEST_DIRECTUS_DATABASE_URL", "the DSN of the PostgreSQL database that Directus owns"),
	}
}

// artifacts returns the folder for this test's screenshots and logs, under
// the git-ignored .data/e2e (or TRM_E2E_ARTIFACTS), emptied first.
func artifacts(tb testing.TB) string {
	tb.Helper()
	base := os.Getenv("TRM_E2E_ARTIFACTS")
	if base == "" {
		base = filepath.Join(testkit.RepoRoot(tb), ".data", "e2e")
	}
	dir := filepath.Join(base, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(tb.Name(), "_"))
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// Binaries built once per test process: the workers' own cmd/ mains, the
// dev binary and the simulator.
var commands = map[string]string{
	"bridge":      "./bridge/cmd/bridge",
	"persister":   "./persister/cmd/persister",
	"authsvc":     "./authsvc/cmd/authsvc",
	"broadcaster": "./broadcaster/cmd/broadcaster",
	"trm-dev":     "./scripts/cmd/trm-dev",
	"simulate":    "./scripts/cmd/simulate",
}

type build struct {
	once sync.Once
	err  error
}

var (
	binDirOnce sync.Once
	binDir     string
	binDirErr  error
	builds     = map[string]*build{}
)

func init() {
	for name := range commands {
		builds[name] = &build{}
	}
}

// bin returns the path of a built command, building it on first use (no
// -race: these are the production binaries).
func bin(tb testing.TB, name string) string {
	tb.Helper()
	root := testkit.RepoRoot(tb)
	b, ok := builds[name]
	if !ok {
		tb.Fatalf("e2e: unknown command %s", name)
	}
	binDirOnce.Do(func() { binDir, binDirErr = os.MkdirTemp("", "trm-e2e-bin-") })
	if binDirErr != nil {
		tb.Fatal(binDirErr)
	}
	out := filepath.Join(binDir, name)
	b.once.Do(func() {
		cmd := exec.Command("go", "build", "-o", out, commands[name])
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", commands[name], err, msg)
		}
	})
	if b.err != nil {
		tb.Fatalf("e2e: build: %v", b.err)
	}
	return out
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// proc is one worker process, restartable, its output appended to a log
// file among the test's artefacts.
type proc struct {
	tb   testing.TB
	name string
	path string
	env  []string
	args []string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan error
}

// startProc starts bin with the given environment (added to a minimal
// one), stopped with SIGTERM at cleanup.
func startProc(tb testing.TB, dir, name, path string, env map[string]string, args ...string) *proc {
	tb.Helper()
	p := &proc{tb: tb, name: name, path: path, args: args, log: filepath.Join(dir, name+".log")}
	p.env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LOG_LEVEL=info"}
	for k, v := range env {
		p.env = append(p.env, k+"="+v)
	}
	p.Start()
	tb.Cleanup(func() { p.Stop() })
	return p
}

// Start starts the process again (no-op while it runs).
func (p *proc) Start() {
	p.tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.tb.Fatal(err)
	}
	fmt.Fprintf(f, "==== %s start %s\n", time.Now().Format(time.RFC3339Nano), p.name)
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		p.tb.Fatalf("e2e: start %s: %v", p.name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); f.Close() }()
	p.cmd, p.done = cmd, done
}

// Kill9 kills the process with SIGKILL and waits for it.
func (p *proc) Kill9() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.cmd = nil
}

// Stop sends SIGTERM and waits up to 30 s (then SIGKILL). It reports a
// non-zero exit after SIGTERM as a test error: a worker must shut down
// cleanly.
func (p *proc) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.tb.Errorf("e2e: %s exited with %v after SIGTERM; see %s", p.name, err, p.log)
		}
	case <-time.After(30 * time.Second):
		p.tb.Errorf("e2e: %s still running 30 s after SIGTERM; killed; see %s", p.name, p.log)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.cmd = nil
}

// Exited reports whether the process has ended by itself (it is then
// reaped and may be started again).
func (p *proc) Exited() (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return true, nil
	}
	select {
	case err := <-p.done:
		p.cmd = nil
		return true, err
	default:
		return false, nil
	}
}

// waitReady polls http://addr/readyz until it answers 200, failing early
// when the process died.
func waitReady(tb testing.TB, p *proc, addr string, timeout time.Duration) {
	tb.Helper()
	testkit.Eventually(tb, timeout, func() error {
		if exited, err := p.Exited(); exited {
			tb.Fatalf("e2e: %s exited (%v) before ready; see %s", p.name, err, p.log)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s /readyz: %d", p.name, resp.StatusCode)
		}
		return nil
	})
}
