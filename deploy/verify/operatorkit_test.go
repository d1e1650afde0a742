package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/redis/go-redis/v9"
	"gopkg.in/yaml.v3"

	"trm-live/authsvc"
	"trm-live/bridge"
	"trm-live/broadcaster"
	"trm-live/contract/ws"
	"trm-live/persister"
	"trm-live/testkit"
	"trm-live/testkit/directus"
)

// The operator kit (deploy/prometheus, deploy/grafana) queries the
// workers' metrics by name; a renamed metric would leave an alert that
// never fires and an empty panel. TestOperatorKitMetricNames runs the four
// workers, makes them create their labelled series, and requires every
// metric named by an alert rule or a dashboard query to be on a live
// /metrics.

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promOffset   = regexp.MustCompile(`\boffset\s+-?[0-9A-Za-z]+`)
	promVar      = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	promToken    = regexp.MustCompile(`[0-9][0-9.]*(?:[eE][+-]?[0-9]+)?|[A-Za-z_:][A-Za-z0-9_:]*\s*\(?`)
	promKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "offset": true, "inf": true, "nan": true}
)

// promqlMetricNames returns the metric names a PromQL expression selects:
// every identifier that is not a function or aggregation, a keyword, a
// label (in matchers or grouping clauses), a string, a duration or a
// Grafana variable.
func promqlMetricNames(expr string) []string {
	s := promString.ReplaceAllString(expr, " ")
	s = promVar.ReplaceAllString(s, " ")
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRange.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	s = promOffset.ReplaceAllString(s, " ")
	var names []string
	for _, tok := range promToken.FindAllString(s, -1) {
		if tok[0] >= '0' && tok[0] <= '9' || strings.HasSuffix(tok, "(") {
			continue // a number, or a function or aggregation call
		}
		if tok = strings.TrimSpace(tok); !promKeywords[strings.ToLower(tok)] && !slices.Contains(names, tok) {
			names = append(names, tok)
		}
	}
	return names
}

func TestPromQLMetricNames(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{`up{job=~"bridge|persister"} == 0`, "up"},
		{`sum by (job, reason) (rate(bridge_dead_letters_total[5m]) or rate(persister_dead_letters_total[5m])) > 0.1`,
			"bridge_dead_letters_total persister_dead_letters_total"},
		{`histogram_quantile(0.99, sum by (le, endpoint) (rate(broadcaster_auth_seconds_bucket[$__rate_interval])))`,
			"broadcaster_auth_seconds_bucket"},
		{`bridge_group_lag > 1000 and deriv(bridge_group_lag[5m]) > 0`, "bridge_group_lag"},
		{`a_total / on (server_name) max by (server_name) (b_bytes) > 45e9`, "a_total b_bytes"},
		{`absent(up{job="x"}) or absent(up{job="y"})`, "up"},
		{`rate(x_total[5m] offset 1h) unless ignoring (le) y`, "x_total y"},
		{`sum(rate(foo{code="4401", reason="a b"}[${__interval}]))`, "foo"},
	} {
		if got := strings.Join(promqlMetricNames(tc.expr), " "); got != tc.want {
			t.Errorf("promqlMetricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// kitQuery is one PromQL expression of the operator kit and where it is.
type kitQuery struct{ where, expr string }

// ruleQueries returns the expr of every rule in a rules file.
func ruleQueries(t *testing.T, path string) []kitQuery {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []kitQuery
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out = append(out, kitQuery{filepath.Base(path) + " " + r.Alert + r.Record, r.Expr})
		}
	}
	return out
}

// dashboardQueries returns the expr of every panel target of a Grafana
// dashboard, and checks the shape provisioning needs.
func dashboardQueries(t *testing.T, path string) []kitQuery {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		ID         int             `json:"id"`
		Type       string          `json:"type"`
		Title      string          `json:"title"`
		Datasource json.RawMessage `json:"datasource"`
		Targets    []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	}
	var d struct {
		UID    string  `json:"uid"`
		Title  string  `json:"title"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("%s: uid and title are required for provisioning", path)
	}
	var out []kitQuery
	var rows []string
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("%s: panel id %d used twice", path, p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			rows = append(rows, strings.ToLower(p.Title))
			continue
		}
		if len(p.Datasource) == 0 || len(p.Targets) == 0 {
			t.Errorf("%s: panel %q has no datasource or no query", path, p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, kitQuery{fmt.Sprintf("%s panel %q", filepath.Base(path), p.Title), tg.Expr})
		}
	}
	for _, w := range []string{"bridge", "persister", "authsvc", "broadcaster"} {
		if !slices.ContainsFunc(rows, func(r string) bool { return strings.HasPrefix(r, w) }) {
			t.Errorf("%s: no row for %s (rows %q)", path, w, rows)
		}
	}
	return out
}

// natsExporterMetrics are the series of prometheus-nats-exporter
// (-varz -jsz=all -healthz) that rules/nats.rules.yml may use: its jsz
// collector's server, stream and consumer gauges, its healthz collector's
// gnatsd_healthz_status, and Prometheus's own up.
var natsExporterMetrics = []string{"up", "gnatsd_healthz_status",
	"jetstream_server_total_message_bytes", "jetstream_server_max_storage", "jetstream_server_total_messages",
	"jetstream_stream_total_bytes", "jetstream_stream_total_messages", "jetstream_stream_first_seq", "jetstream_stream_last_seq",
	"jetstream_consumer_num_pending", "jetstream_consumer_num_ack_pending", "jetstream_consumer_num_redelivered"}

func TestNATSRulesNameExporterMetrics(t *testing.T) {
	root := testkit.RepoRoot(t)
	qs := ruleQueries(t, filepath.Join(root, "deploy", "prometheus", "rules", "nats.rules.yml"))
	if len(qs) == 0 {
		t.Fatal("nats.rules.yml has no rule")
	}
	for _, q := range qs {
		for _, n := range promqlMetricNames(q.expr) {
			if !slices.Contains(natsExporterMetrics, n) {
				t.Errorf("%s: %s is not a prometheus-nats-exporter metric", q.where, n)
			}
		}
	}
}

func TestOperatorKitMetricNames(t *testing.T) {
	root := testkit.RepoRoot(t)
	queries := ruleQueries(t, filepath.Join(root, "deploy", "prometheus", "rules", "workers.rules.yml"))
	nRules := len(queries)
	queries = append(queries, dashboardQueries(t, filepath.Join(root, "deploy", "grafana", "dashboards", "trm-live.json"))...)
	if nRules < 10 || len(queries)-nRules < 20 {
		t.Fatalf("found %d rules and %d dashboard queries: the files are not where the test looks", nRules, len(queries)-nRules)
	}
	need := map[string][]string{} // metric -> where it is used
	for _, q := range queries {
		names := promqlMetricNames(q.expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", q.where, q.expr)
		}
		for _, n := range names {
			need[n] = append(need[n], q.where)
		}
	}

	addrs := startKitWorkers(t)

	// up is Prometheus's own series for every target.
	testkit.Eventually(t, 60*time.Second, func() error {
		have := map[string]bool{"up": true}
		for w, addr := range addrs {
			names, err := scrapeNames(addr)
			if err != nil {
				return fmt.Errorf("%s: %w", w, err)
			}
			for _, n := range names {
				have[n] = true
			}
		}
		var missing []string
		for n, where := range need {
			if !have[n] {
				missing = append(missing, fmt.Sprintf("%s (used by %s)", n, strings.Join(where, "; ")))
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			return fmt.Errorf("not on any worker's /metrics:\n  %s", strings.Join(missing, "\n  "))
		}
		return nil
	})
	t.Logf("%d queries (%d alert rules, %d dashboard) name %d metrics, all exported", len(queries), nRules, len(queries)-nRules, len(need))
}

// scrapeNames returns the series names on http://addr/metrics.
func scrapeNames(addr string) ([]string, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	var names []string
	for line := range strings.SplitSeq(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names = append(names, line[:i])
		}
	}
	return names, nil
}

// startKitWorkers runs the four workers in-process on one NATS server and
// gives each labelled series a reason to exist: a valid and a bad Redis
// entry (bridge lag, a dead letter), a refused and an accepted WebSocket
// (closes, handshakes, authsvc requests), a live subscribe and a replay
// subscribe. It returns each worker's HTTP address.
func startKitWorkers(t *testing.T) map[string]string {
	t.Helper()
	logs := newLogs(t)
	n := testkit.StartNATS(t)
	dsn := testkit.Postgres(t)
	testkit.SeedDirectusTables(t, dsn)
	pool := testkit.Pool(t, dsn)
	rdb := testkit.Redis(t)
	dx := directus.Start(t)
	stream := testkit.Unique("telemetry")
	eventID := directus.NewID()
	user := dx.AddUser(directus.User{Email: "ops@example.com", Password: "ops-password"})
	directus.InsertUsers(t, dsn, user)
	org := directus.NewID()
	ctx := context.Background()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO organizations (id, name) VALUES ($1, 'org')`, []any{org}},
		{`INSERT INTO events (id, organization_id, name) VALUES ($1, $2, 'race')`, []any{eventID, org}},
		{`INSERT INTO organization_users (id, organization_id, user_id) VALUES ($1, $2, $3)`, []any{directus.NewID(), org, user.ID}},
		{`INSERT INTO event_devices (id, event_id, device_id) VALUES (gen_random_uuid(), $1, 'dev-1')`, []any{eventID}},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
	}
	cookie := dx.Login(t, user)

	addrs := map[string]string{}
	env := map[string]string{"NATS_URL": n.URL, "DATABASE_URL": dsn, "REDIS_URL": redisURL(t), "DIRECTUS_URL": dx.URL,
		"BRIDGE_STREAMS": stream, "BRIDGE_GROUP": testkit.Unique("bridge")}
	bcfg, err := bridge.LoadConfig(nil, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	bcfg.Logger, bcfg.Listener = logs.logger("bridge"), listen(t)
	addrs["bridge"] = bcfg.Listener.Addr().String()
	runWorker(t, "bridge", func(ctx context.Context) error { return bridge.Run(ctx, bcfg) })

	pcfg, err := persister.LoadConfig(nil, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.Logger, pcfg.Listener = logs.logger("persister"), listen(t)
	addrs["persister"] = pcfg.Listener.Addr().String()
	runWorker(t, "persister", func(ctx context.Context) error { return persister.Run(ctx, pcfg) })

	acfg, err := authsvc.LoadConfig(nil, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	acfg.Logger, acfg.Listener = logs.logger("authsvc"), listen(t)
	addrs["authsvc"] = acfg.Listener.Addr().String()
	runWorker(t, "authsvc", func(ctx context.Context) error { return authsvc.Run(ctx, acfg) })

	wcfg, err := broadcaster.LoadConfig(nil, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	wcfg.Logger, wcfg.Listener = logs.logger("broadcaster"), listen(t)
	addrs["broadcaster"] = wcfg.Listener.Addr().String()
	runWorker(t, "broadcaster", func(ctx context.Context) error { return broadcaster.Run(ctx, wcfg) })

	testkit.Eventually(t, 60*time.Second, func() error {
		for w, addr := range addrs {
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil {
				return fmt.Errorf("%s /readyz: %w", w, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s /readyz: %s", w, resp.Status)
			}
		}
		return nil
	})

	now := time.Now().UTC()
	for _, fields := range []map[string]any{
		{"device_id": "dev-1", "ts": now.Add(-time.Minute).Format(time.RFC3339Nano), "lat": "45.1", "lon": "7.6"},
		{"device_id": "dev-1", "ts": "not a time", "lat": "45.1", "lon": "7.6"}, // dead-lettered
	} {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: fields}).Err(); err != nil {
			t.Fatal(err)
		}
	}

	wsURL := "ws://" + addrs["broadcaster"] + ws.Path
	// No cookie: refused with 4401.
	if c, _, err := websocket.DefaultDialer.Dial(wsURL, nil); err == nil {
		_, _, err = c.ReadMessage()
		c.Close()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != ws.CloseUnauthorized {
			t.Fatalf("dial without a cookie: %v, want close %d", err, ws.CloseUnauthorized)
		}
	}
	h := http.Header{}
	h.Set("Cookie", directus.CookieName+"="+cookie)
	c, resp, err := websocket.DefaultDialer.Dial(wsURL, h)
	if err != nil {
		t.Fatalf("dial with a cookie: %v", err)
	}
	resp.Body.Close()
	defer c.Close()
	topic := ws.EventTopic(eventID)
	for _, req := range []ws.Request{
		{Type: ws.TypeSubscribe, Topic: topic, ID: "live"},
		{Type: ws.TypeSubscribe, Topic: topic, ID: "replay", Replay: true,
			ReplayOptions: ws.ReplayOptions{From: now.Add(-time.Hour), To: now, Speed: ws.SpeedMax}},
	} {
		if err := c.WriteMessage(websocket.TextMessage, req.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	// Both subscribes answered (subscribed or an error frame), whatever
	// else arrives in between.
	answered := map[string]bool{}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for len(answered) < 2 {
		_, data, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("read /ws-live: %v (answered %v)", err, answered)
		}
		f, err := ws.DecodeFrame(data)
		if err != nil {
			t.Fatal(err)
		}
		if f.ID != "" && (f.Type == ws.TypeSubscribed || f.Type == ws.TypeError) {
			answered[f.ID] = true
		}
	}
	return addrs
}
