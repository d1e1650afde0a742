package soakrun

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one restartable child process, its output appended to a log.
type proc struct {
	name string
	path string
	args []string
	env  []string
	log  string
	// ready is the readiness URL ("" when none).
	ready string
	// metrics is the /metrics URL of a worker ("" for others).
	metrics string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	killed  bool // by the soak: its exit is expected
	crashes int  // exits the soak did not cause
	starts  int
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "==== %s start %s\n", time.Now().Format(time.RFC3339Nano), p.name)
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.killed = cmd, done, false
	p.starts++
	go func() {
		_ = cmd.Wait()
		f.Close()
		p.mu.Lock()
		if p.cmd == cmd {
			if !p.killed {
				p.crashes++
			}
			p.cmd = nil
		}
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *proc) kill9() {
	p.signal(syscall.SIGKILL, 0)
}

// stop sends SIGTERM and waits up to timeout, then SIGKILL.
func (p *proc) stop(timeout time.Duration) {
	p.signal(syscall.SIGTERM, timeout)
}

func (p *proc) signal(sig syscall.Signal, timeout time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	if cmd != nil {
		p.killed = true
	}
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	if sig == syscall.SIGKILL {
		<-done
		return
	}
	select {
	case <-done:
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

// running reports whether the process is alive; a crashed one is counted.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

func (p *proc) crashCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.crashes
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// isReady is one probe of the readiness URL.
func (p *proc) isReady(ctx context.Context) bool {
	if p.ready == "" {
		return p.running()
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.ready, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReady polls until ready or timeout.
func (p *proc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.isReady(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s; see %s", p.name, timeout, p.log)
}

// usage scrapes process_resident_memory_bytes and go_goroutines.
func (p *proc) usage(ctx context.Context) (Usage, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.metrics, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return Usage{}, err
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return ParseUsage(b.String())
}

// ParseUsage reads RSS and goroutines from a Prometheus text exposition.
func ParseUsage(text string) (Usage, error) {
	var u Usage
	var got int
	for _, line := range strings.Split(text, "\n") {
		var v float64
		if _, err := fmt.Sscanf(line, "process_resident_memory_bytes %g", &v); err == nil {
			u.RSS = v
			got++
		} else if _, err := fmt.Sscanf(line, "go_goroutines %g", &v); err == nil {
			u.Goroutines = v
			got++
		}
	}
	if got < 2 {
		return u, errors.New("metrics: process_resident_memory_bytes or go_goroutines missing")
	}
	return u, nil
}

// ---- servers ----

// asPostgres runs a PostgreSQL tool as the postgres user when root.
func asPostgres(name string, args ...string) *exec.Cmd {
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	}
	return exec.Command(name, args...)
}

// pgServer is a PostgreSQL cluster in dir on 127.0.0.1:port.
type pgServer struct {
	bin, dir string
	port     int
}

func pgBin() (string, error) {
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(m) == 0 {
		return "", errors.New("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (scripts/soak installs them)")
	}
	return filepath.Dir(m[len(m)-1]), nil
}

func (s *pgServer) init() error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chown", "postgres:", s.dir).CombinedOutput(); err != nil {
			return fmt.Errorf("chown %s: %v %s", s.dir, err, out)
		}
		for p := s.dir; p != "/"; p = filepath.Dir(p) {
			if fi, err := os.Stat(p); err == nil {
				_ = os.Chmod(p, fi.Mode().Perm()|0o001)
			}
		}
	}
	out, err := asPostgres(filepath.Join(s.bin, "initdb"), "-D", filepath.Join(s.dir, "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	return nil
}

func (s *pgServer) start() error {
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -k %s -c max_connections=300", s.port, s.dir)
	out, err := asPostgres(filepath.Join(s.bin, "pg_ctl"), "-D", filepath.Join(s.dir, "data"), "-l", filepath.Join(s.dir, "pg.log"), "-w", "-t", "60", "-o", opts, "start").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl start: %v\n%s", err, out)
	}
	return nil
}

// stop stops the server: mode immediate is a crash (recovery at start),
// fast a clean shutdown.
func (s *pgServer) stop(mode string) error {
	out, err := asPostgres(filepath.Join(s.bin, "pg_ctl"), "-D", filepath.Join(s.dir, "data"), "-m", mode, "-w", "stop").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

func (s *pgServer) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// natsNodeConf writes node i's configuration: deploy/nats/prod.conf with
// the listen addresses, monitoring port and store moved to loopback and
// dir, beside a copy of accounts.conf.
func natsNodeConf(root, dir string, clientPort, routePort, httpPort int) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	prod, err := os.ReadFile(filepath.Join(root, "deploy", "nats", "prod.conf"))
	if err != nil {
		return "", err
	}
	acc, err := os.ReadFile(filepath.Join(root, "deploy", "nats", "accounts.conf"))
	if err != nil {
		return "", err
	}
	conf := string(prod)
	for _, r := range [][2]string{
		{"listen: 0.0.0.0:4222", fmt.Sprintf("listen: 127.0.0.1:%d", clientPort)},
		{"http: 0.0.0.0:8222", fmt.Sprintf("http: 127.0.0.1:%d", httpPort)},
		{"store_dir: /data", fmt.Sprintf("store_dir: %q", filepath.Join(dir, "store"))},
		{"listen: 0.0.0.0:6222", fmt.Sprintf("listen: 127.0.0.1:%d", routePort)},
		{"max_file_store: 50GB", "max_file_store: 8GB"},
	} {
		if !strings.Contains(conf, r[0]) {
			return "", fmt.Errorf("deploy/nats/prod.conf: %q not found; update the soak's rewrite", r[0])
		}
		conf = strings.Replace(conf, r[0], r[1], 1)
	}
	path := filepath.Join(dir, "node.conf")
	if err := os.WriteFile(filepath.Join(dir, "accounts.conf"), acc, 0o644); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte(conf), 0o644)
}
