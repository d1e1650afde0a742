package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"trm-live/testkit"
	"trm-live/testkit/directus"
)

// TestPrometheusAlertsPersisterDown runs a real Prometheus (Debian's
// package) with the operator kit's alert rules (deploy/prometheus/rules,
// their "for" durations shortened to 5 s) scraping the four workers'
// binaries once a second. The persister is killed with SIGKILL: its
// TrmWorkerDown alert goes pending, then firing; restarted, the alert
// resolves. The other workers raise nothing, and each exports
// trm_build_info. A screenshot of Prometheus's
// alerts page while firing is kept among the artefacts.
//
// authsvc runs against the Directus stand-in: no request needs a real
// Directus here.
func TestPrometheusAlertsPersisterDown(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("e2e: no prometheus binary: install Debian's package (apt-get install prometheus; scripts/test does)")
	}
	dir := artifacts(t)
	root := testkit.RepoRoot(t)
	n := testkit.StartNATS(t)
	ensureStreams(t, n)
	dsn := testkit.Postgres(t)
	testkit.SeedDirectusTables(t, dsn)
	testkit.Redis(t) // fails with the actionable message when unset
	dx := directus.Start(t)

	free := testkit.FreeAddrs(t, 5)
	addrs := map[string]string{"bridge": free[0], "persister": free[1], "authsvc": free[2], "broadcaster": free[3]}
	promAddr := free[4]
	envs := map[string]map[string]string{
		"bridge": {"REDIS_URL": os.Getenv(testkit.EnvRedisURL), "BRIDGE_STREAMS": testkit.Unique("telemetry"),
			"BRIDGE_GROUP": testkit.Unique("bridge"), "DATABASE_URL": dsn},
		"persister":   {"DATABASE_URL": dsn},
		"authsvc":     {"DATABASE_URL": dsn, "DIRECTUS_URL": dx.URL},
		"broadcaster": {},
	}
	procs := map[string]*proc{}
	for _, w := range []string{"bridge", "persister", "authsvc", "broadcaster"} {
		env := envs[w]
		env["NATS_URL"], env["HTTP_ADDR"] = n.URL, addrs[w]
		procs[w] = startProc(t, dir, w, bin(t, w), env)
	}
	for w, p := range procs {
		waitReady(t, p, addrs[w], 60*time.Second)
	}

	// The kit's rules, with every "for" at 5 s, and a scrape config for the
	// four processes at one scrape and one evaluation per second.
	rules, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", "rules", "workers.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	shortFor := regexp.MustCompile(`(?m)^(\s+for: )\S+$`)
	if len(shortFor.FindAll(rules, -1)) == 0 {
		t.Fatal("workers.rules.yml has no \"for:\" line to shorten")
	}
	promDir := t.TempDir()
	rulesPath := filepath.Join(promDir, "workers.rules.yml")
	if err := os.WriteFile(rulesPath, shortFor.ReplaceAll(rules, []byte("${1}5s")), 0o644); err != nil {
		t.Fatal(err)
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nrule_files:\n  - %s\nscrape_configs:\n", rulesPath)
	for _, w := range []string{"bridge", "persister", "authsvc", "broadcaster"} {
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs:\n      - targets: ['%s']\n", w, addrs[w])
	}
	cfgPath := filepath.Join(promDir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	startProc(t, dir, "prometheus", promBin, nil,
		"--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(promDir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	prom := "http://" + promAddr

	// Every target scraped and up; no alert.
	testkit.Eventually(t, 90*time.Second, func() error {
		var up []promSample
		if err := promGet(prom+"/api/v1/query?query="+url.QueryEscape(`up == 1`), &up); err != nil {
			return err
		}
		if len(up) != 4 {
			return fmt.Errorf("%d of 4 targets up", len(up))
		}
		return nil
	})
	// Each binary's main registers the build info: unstamped, "dev".
	var info []promSample
	if err := promGet(prom+"/api/v1/query?query="+url.QueryEscape(`trm_build_info{version="dev"} == 1`), &info); err != nil || len(info) != 4 {
		t.Fatalf("trm_build_info of the four binaries: %v %v", info, err)
	}
	if as, err := workerDownAlerts(prom); err != nil || len(as) != 0 {
		t.Fatalf("alerts before the kill: %v %v", as, err)
	}

	procs["persister"].Kill9()
	killed := time.Now()
	var pendingAt, firingAt time.Time
	testkit.Eventually(t, 90*time.Second, func() error {
		as, err := workerDownAlerts(prom)
		if err != nil {
			return err
		}
		for _, a := range as {
			if a.Labels["job"] != "persister" {
				t.Fatalf("alert for a worker that runs: %+v", a)
			}
			switch a.State {
			case "pending":
				if pendingAt.IsZero() {
					pendingAt = time.Now()
				}
			case "firing":
				firingAt = time.Now()
				return nil
			}
		}
		return fmt.Errorf("TrmWorkerDown for persister not firing yet (alerts %v)", as)
	})
	if pendingAt.IsZero() {
		t.Fatal("TrmWorkerDown went to firing without being seen pending")
	}
	t.Logf("TrmWorkerDown{job=persister}: pending %v and firing %v after the kill",
		pendingAt.Sub(killed).Round(100*time.Millisecond), firingAt.Sub(killed).Round(100*time.Millisecond))
	screenshotAlerts(t, prom, filepath.Join(dir, "prometheus-alerts-firing.png"))

	procs["persister"].Start()
	waitReady(t, procs["persister"], addrs["persister"], 60*time.Second)
	restarted := time.Now()
	testkit.Eventually(t, 60*time.Second, func() error {
		as, err := workerDownAlerts(prom)
		if err != nil {
			return err
		}
		if len(as) > 0 {
			return fmt.Errorf("still active after the restart: %v", as)
		}
		return nil
	})
	t.Logf("TrmWorkerDown{job=persister} resolved %v after the restart", time.Since(restarted).Round(100*time.Millisecond))
}

// promSample is one element of an instant query's vector.
type promSample struct {
	Metric map[string]string `json:"metric"`
}

// promAlert is one active alert of /api/v1/alerts.
type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

// promGet decodes the data of a Prometheus API answer: the result of a
// query, or the alerts of /api/v1/alerts.
func promGet(u string, out any) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result json.RawMessage `json:"result"`
			Alerts json.RawMessage `json:"alerts"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: %w", u, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s: %s %s", u, body.Status, body.Error)
	}
	raw := body.Data.Result
	if raw == nil {
		raw = body.Data.Alerts
	}
	return json.Unmarshal(raw, out)
}

// workerDownAlerts returns the active (pending or firing) TrmWorkerDown
// alerts.
func workerDownAlerts(prom string) ([]promAlert, error) {
	var all, out []promAlert
	if err := promGet(prom+"/api/v1/alerts", &all); err != nil {
		return nil, err
	}
	for _, a := range all {
		if a.Labels["alertname"] == "TrmWorkerDown" {
			out = append(out, a)
		}
	}
	return out, nil
}

// screenshotAlerts opens Prometheus's alerts page in headless Chromium
// (Debian's build serves the classic UI), expands TrmWorkerDown with its
// annotations, waits until it shows the rule firing for the persister, and
// saves a PNG.
func screenshotAlerts(t *testing.T, prom, path string) {
	t.Helper()
	c := startChromium(t)
	// Tall enough for the rule, its firing instance and the annotations.
	c.call(t, "Emulation.setDeviceMetricsOverride", map[string]any{"width": 1280, "height": 1400, "deviceScaleFactor": 1, "mobile": false}, nil)
	c.navigate(t, prom+"/classic/alerts")
	testkit.Eventually(t, 30*time.Second, func() error {
		var text string
		err := c.eval(`(() => {
			for (const el of document.querySelectorAll('tr.alert_header')) {
				if (el.textContent.includes('TrmWorkerDown') && el.nextElementSibling && getComputedStyle(el.nextElementSibling).display === 'none') el.click();
			}
			for (const el of document.querySelectorAll('tr.alert_annotations')) el.style.display = '';
			return document.body.innerText;
		})()`, &text)
		if err != nil {
			return err
		}
		if !strings.Contains(text, "TrmWorkerDown") || !strings.Contains(text, `job="persister"`) || !strings.Contains(strings.ToLower(text), "firing") {
			return fmt.Errorf("alerts page does not show TrmWorkerDown firing for persister yet")
		}
		return nil
	})
	c.screenshot(t, path)
}
