package verify

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"trm-live/testkit"
)

// composeFile is a compose file with its variables interpolated from the
// committed example of its --env-file, as `docker compose --env-file` would.
type composeFile struct {
	name    string // file name under deploy/
	dir     string // deploy/
	vars    map[string]string
	doc     map[string]any
	envFile string // the --env-file example it was interpolated with
}

// composeFiles maps each compose file to the example of its --env-file.
var composeFiles = map[string]string{
	"compose.yml":     "env/compose.env.example",
	"compose.dev.yml": "env/dev.env.example",
}

func deployDir(t testing.TB) string {
	return filepath.Join(testkit.RepoRoot(t), "deploy")
}

func loadCompose(t testing.TB, name string) *composeFile {
	t.Helper()
	dir := deployDir(t)
	envExample := composeFiles[name]
	vars, _, err := readEnvFile(filepath.Join(dir, envExample))
	if err != nil {
		t.Fatal(err)
	}
	fillSecrets(vars)
	raw, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	v, err := interpolateTree(doc, vars)
	if err != nil {
		t.Fatalf("%s with %s: %v", name, envExample, err)
	}
	return &composeFile{name: name, dir: dir, vars: vars, doc: v.(map[string]any), envFile: envExample}
}

// fillSecrets gives every empty password, key or secret of an example env
// file a value, as the operator must before deploying.
func fillSecrets(vars map[string]string) {
	for k, v := range vars {
		if v != "" {
			continue
		}
		switch {
		case strings.HasPrefix(k, "NATS_") && strings.HasSuffix(k, "_PASSWORD"):
			vars[k] = TestPassword(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(k, "NATS_"), "_PASSWORD")))
		case strings.HasSuffix(k, "_PASSWORD"), strings.HasSuffix(k, "_KEY"), strings.HasSuffix(k, "_SECRET"):
			vars[k] = "filled-" + strings.ToLower(k)
		}
	}
}

var (
	envLine        = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)=(.*)$`)
	documentedLine = regexp.MustCompile(`^#\s*([A-Z][A-Z0-9_]*)=`)
)

// readEnvFile parses KEY=VALUE lines. It returns the set variables and the
// names documented in comments as "# KEY=default ...". Quotes are refused:
// Compose v1 keeps them in the value and v2 strips them.
func readEnvFile(path string) (set map[string]string, documented map[string]bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	set, documented = map[string]string{}, map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if m := documentedLine.FindStringSubmatch(line); m != nil {
			documented[m[1]] = true
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := envLine.FindStringSubmatch(line)
		if m == nil {
			return nil, nil, fmt.Errorf("%s:%d: not KEY=VALUE: %q", path, n, line)
		}
		if strings.ContainsAny(m[2], `"'`) {
			return nil, nil, fmt.Errorf("%s:%d: %s: no quotes in env files (Compose v1 and v2 read them differently)", path, n, m[1])
		}
		if _, dup := set[m[1]]; dup {
			return nil, nil, fmt.Errorf("%s:%d: %s set twice", path, n, m[1])
		}
		set[m[1]] = m[2]
		documented[m[1]] = true
	}
	return set, documented, sc.Err()
}

var varRef = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// interpolate resolves ${VAR}, ${VAR:-default}, ${VAR-default},
// ${VAR:?message}, ${VAR?message}, $VAR and $$ as Compose does.
func interpolate(s string, vars map[string]string) (string, error) {
	var err error
	out := varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sm := varRef.FindStringSubmatch(m)
		name, op, arg := sm[1], sm[2], sm[3]
		if name == "" {
			name = sm[4]
		}
		v, ok := vars[name]
		switch op {
		case ":-":
			if v == "" {
				return arg
			}
		case "-":
			if !ok {
				return arg
			}
		case ":?":
			if v == "" {
				err = fmt.Errorf("required variable %s is empty: %s", name, arg)
			}
		case "?":
			if !ok {
				err = fmt.Errorf("required variable %s is unset: %s", name, arg)
			}
		}
		return v
	})
	return out, err
}

func interpolateTree(v any, vars map[string]string) (any, error) {
	switch x := v.(type) {
	case string:
		return interpolate(x, vars)
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			r, err := interpolateTree(e, vars)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			out[k] = r
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			r, err := interpolateTree(e, vars)
			if err != nil {
				return nil, err
			}
			out[i] = r
		}
		return out, nil
	}
	return v, nil
}

func (c *composeFile) services() map[string]map[string]any {
	out := map[string]map[string]any{}
	for name, s := range asMap(c.doc["services"]) {
		out[name] = asMap(s)
	}
	return out
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// asStrings reads a list, or a map of name to value as "name=value"
// (environment, labels) or as names only (networks).
func asStrings(v any) []string {
	var out []string
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			out = append(out, fmt.Sprint(e))
		}
	case string:
		out = append(out, x)
	}
	return out
}

// kv reads environment or labels, in list or map form.
func kv(v any) map[string]string {
	out := map[string]string{}
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if e == nil {
				out[k] = ""
			} else {
				out[k] = fmt.Sprint(e)
			}
		}
	case []any:
		for _, e := range x {
			k, val, _ := strings.Cut(fmt.Sprint(e), "=")
			out[k] = val
		}
	}
	return out
}

func networksOf(svc map[string]any) []string {
	switch x := svc["networks"].(type) {
	case map[string]any:
		var out []string
		for k := range x {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	case []any:
		return asStrings(x)
	}
	return []string{"default"}
}

// workerOf is the worker a service runs: its build argument WORKER.
func workerOf(svc map[string]any) string {
	args := kv(asMap(svc["build"])["args"])
	return args["WORKER"]
}

// serviceEnv is the environment a worker container starts with: the image
// default (HTTP_ADDR), then each env_file (its committed example), then
// environment. It also returns every name documented in those env files.
func (c *composeFile) serviceEnv(t testing.TB, svc map[string]any) (env map[string]string, documented map[string]bool) {
	t.Helper()
	env = map[string]string{"HTTP_ADDR": ":8080"} // deploy/docker/Dockerfile ENV
	documented = map[string]bool{}
	for _, f := range asStrings(svc["env_file"]) {
		set, doc, err := readEnvFile(filepath.Join(c.dir, f+".example"))
		if err != nil {
			t.Fatalf("%s: env_file %s: %v", c.name, f, err)
		}
		fillSecrets(set)
		for k, v := range set {
			env[k] = v
		}
		for k := range doc {
			documented[k] = true
		}
	}
	for k, v := range kv(svc["environment"]) {
		env[k] = v
		documented[k] = true
	}
	return env, documented
}

func TestComposeWorkerSettings(t *testing.T) {
	t.Parallel()
	for name := range composeFiles {
		t.Run(name, func(t *testing.T) {
			c := loadCompose(t, name)
			seen := 0
			for sname, svc := range c.services() {
				w := workerOf(svc)
				if w == "" {
					continue
				}
				seen++
				spec, ok := workerSpecs[w]
				if !ok {
					t.Errorf("service %s: build arg WORKER=%s is no worker this test knows", sname, w)
					continue
				}
				env, documented := c.serviceEnv(t, svc)
				reads := spec.reads()
				if w == "trm-dev" {
					// trm-dev sets these two; the image's HTTP_ADDR is unused.
					delete(reads, "NATS_URL")
					delete(reads, "HTTP_ADDR")
					delete(env, "HTTP_ADDR")
					// Its env file refers to the workers' own examples.
					for _, dw := range devWorkers {
						_, doc, err := readEnvFile(filepath.Join(c.dir, "env", dw+".env.example"))
						if err != nil {
							t.Fatal(err)
						}
						for k := range doc {
							documented[k] = true
						}
					}
					_, doc, err := readEnvFile(filepath.Join(c.dir, "env", "common.env.example"))
					if err != nil {
						t.Fatal(err)
					}
					for k := range doc {
						documented[k] = true
					}
				}
				// Every variable the compose file sets is one the worker reads.
				for k := range env {
					if !reads[k] {
						t.Errorf("%s: service %s sets %s, which %s does not read", name, sname, k, w)
					}
				}
				// Every setting of the worker is documented in its env files.
				for k := range reads {
					if !documented[k] {
						t.Errorf("%s: service %s: %s reads %s, which neither its env files (set or as a '# %s=' comment) nor environment mention", name, sname, w, k, k)
					}
				}
				// Dependency URLs default to 127.0.0.1, the container itself.
				for _, k := range []string{"NATS_URL", "REDIS_URL", "DATABASE_URL", "DIRECTUS_URL"} {
					if reads[k] && env[k] == "" {
						t.Errorf("%s: service %s: %s reads %s and it is not set (its default is the container's own loopback)", name, sname, w, k)
					}
				}
				// And the worker accepts the whole environment.
				if err := spec.load(func(k string) string { return env[k] }); err != nil {
					t.Errorf("%s: service %s: %s refuses its configuration: %v", name, sname, w, err)
				}
				if name == "compose.yml" {
					checkNATSUser(t, c, sname, w, env["NATS_URL"])
				}
			}
			if seen == 0 {
				t.Fatalf("%s: no worker service found", name)
			}
		})
	}
}

// checkNATSUser: on the cluster a worker connects as its own user of
// deploy/nats/accounts.conf, with that user's password variable, to the
// "nats" alias every node carries (one URL: the client tries every address
// the alias resolves to and learns the rest from the cluster).
func checkNATSUser(t *testing.T, c *composeFile, sname, worker, natsURL string) {
	t.Helper()
	want := fmt.Sprintf("nats://%s:%s@nats:4222", worker, c.vars[PasswordEnv(worker)])
	if natsURL != want {
		t.Errorf("compose.yml: service %s: NATS_URL %q, want user %s with ${%s} at nats:4222", sname, redactURL(natsURL), worker, PasswordEnv(worker))
	}
	nodes := 0
	for name, svc := range c.services() {
		if !strings.HasPrefix(name, "nats-") {
			continue
		}
		nodes++
		aliases := asStrings(asMap(asMap(svc["networks"])["nats"])["aliases"])
		if !slices.Contains(aliases, "nats") {
			t.Errorf("compose.yml: NATS node %s lacks the network alias nats", name)
		}
	}
	if nodes != 3 {
		t.Errorf("compose.yml: %d NATS nodes, want 3", nodes)
	}
}

func redactURL(u string) string {
	if i := strings.Index(u, "@"); i > 0 {
		if j := strings.LastIndex(u[:i], ":"); j > 0 {
			return u[:j+1] + "xxxxx" + u[i:]
		}
	}
	return u
}

func TestComposeReferencedFilesExist(t *testing.T) {
	t.Parallel()
	for name := range composeFiles {
		t.Run(name, func(t *testing.T) {
			c := loadCompose(t, name)
			exists := func(what, p string) {
				if _, err := os.Stat(p); err != nil {
					t.Errorf("%s: %s: %v", name, what, err)
				}
			}
			exists("--env-file example", filepath.Join(c.dir, c.envFile))
			declaredVolumes := asMap(c.doc["volumes"])
			declaredNetworks := asMap(c.doc["networks"])
			for sname, svc := range c.services() {
				for _, f := range asStrings(svc["env_file"]) {
					exists("service "+sname+" env_file example", filepath.Join(c.dir, f+".example"))
				}
				if b := asMap(svc["build"]); b != nil {
					ctx := filepath.Join(c.dir, fmt.Sprint(b["context"]))
					exists("service "+sname+" build context", ctx)
					exists("service "+sname+" dockerfile", filepath.Join(ctx, fmt.Sprint(b["dockerfile"])))
				}
				mounts := map[string]string{} // container path -> host path
				for _, v := range asStrings(svc["volumes"]) {
					parts := strings.Split(v, ":")
					src := parts[0]
					if len(parts) < 2 {
						t.Errorf("%s: service %s: volume %q without a target", name, sname, v)
						continue
					}
					switch {
					case strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/"):
						host := src
						if !filepath.IsAbs(host) {
							host = filepath.Join(c.dir, src)
						}
						if host != "/var/run/docker.sock" {
							exists("service "+sname+" bind mount", host)
						}
						mounts[parts[1]] = host
					default:
						if _, ok := declaredVolumes[src]; !ok {
							t.Errorf("%s: service %s: named volume %s is not declared", name, sname, src)
						}
					}
				}
				// A file argument under a bind mount (the NATS --config, the
				// seed SQL) must exist on the host.
				for _, arg := range asStrings(svc["command"]) {
					for target, host := range mounts {
						if rest, ok := strings.CutPrefix(arg, target+"/"); ok && strings.Contains(rest, ".") {
							exists("service "+sname+" command argument "+arg, filepath.Join(host, rest))
						}
					}
				}
				for _, n := range networksOf(svc) {
					if n == "default" {
						continue
					}
					if _, ok := declaredNetworks[n]; !ok {
						t.Errorf("%s: service %s: network %s is not declared", name, sname, n)
					}
				}
			}
		})
	}
}

// pathRoute is one row of the path map in docs/DEPLOY.md.
type pathRoute struct {
	path  string
	strip bool
	in    map[string]string // compose file name -> service routed to ("" none)
}

var pathMapRow = regexp.MustCompile("^\\|\\s*`(/[^`]*)`\\s*\\|[^|]*\\|\\s*(yes|no)\\s*\\|\\s*(`[a-z0-9-]+`|—)\\s*\\|\\s*(`[a-z0-9-]+`|—)\\s*\\|")

// readPathMap parses the table under "## Path map" in docs/DEPLOY.md:
// | path | target | strip prefix | compose.dev.yml service | compose.yml service |
func readPathMap(t testing.TB) []pathRoute {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "docs", "DEPLOY.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(raw), "\n## Path map\n")
	if !ok {
		t.Fatal("docs/DEPLOY.md has no '## Path map' section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var out []pathRoute
	svc := func(cell string) string { return strings.Trim(strings.TrimPrefix(cell, "—"), "`") }
	for line := range strings.SplitSeq(section, "\n") {
		m := pathMapRow.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		out = append(out, pathRoute{path: m[1], strip: m[2] == "yes",
			in: map[string]string{"compose.dev.yml": svc(m[3]), "compose.yml": svc(m[4])}})
	}
	if len(out) < 4 {
		t.Fatalf("docs/DEPLOY.md path map: %d rows parsed, want at least /, /api, /ws-business, /ws-live", len(out))
	}
	return out
}

// router is one Traefik HTTP router read from a service's labels.
type router struct {
	name, service, rule, host, pathPrefix string
	labels                                map[string]string // traefik.http.routers.<name>.* suffixes
}

var (
	rulePathPrefix = regexp.MustCompile("PathPrefix\\(`([^`]*)`\\)")
	ruleHost       = regexp.MustCompile("Host\\(`([^`]*)`\\)")
)

func routersOf(svc map[string]any) []router {
	labels := kv(svc["labels"])
	byName := map[string]*router{}
	for k, v := range labels {
		rest, ok := strings.CutPrefix(k, "traefik.http.routers.")
		if !ok {
			continue
		}
		name, key, _ := strings.Cut(rest, ".")
		r := byName[name]
		if r == nil {
			r = &router{name: name, labels: map[string]string{}}
			byName[name] = r
		}
		r.labels[key] = v
	}
	var out []router
	for _, r := range byName {
		r.rule = r.labels["rule"]
		if m := rulePathPrefix.FindStringSubmatch(r.rule); m != nil {
			r.pathPrefix = m[1]
		}
		if m := ruleHost.FindStringSubmatch(r.rule); m != nil {
			r.host = m[1]
		}
		out = append(out, *r)
	}
	return out
}

func TestTraefikLabelsMatchPathMap(t *testing.T) {
	t.Parallel()
	routes := readPathMap(t)
	for name := range composeFiles {
		t.Run(name, func(t *testing.T) {
			c := loadCompose(t, name)
			found := map[string]string{} // path -> service
			for sname, svc := range c.services() {
				labels := kv(svc["labels"])
				rs := routersOf(svc)
				if len(rs) > 0 && labels["traefik.enable"] != "true" {
					t.Errorf("%s: service %s has routers but not traefik.enable=true", name, sname)
				}
				for _, r := range rs {
					if r.pathPrefix == "" {
						t.Errorf("%s: service %s router %s: rule %q has no PathPrefix", name, sname, r.name, r.rule)
						continue
					}
					if prev, dup := found[r.pathPrefix]; dup {
						t.Errorf("%s: path %s routed twice (%s, %s)", name, r.pathPrefix, prev, sname)
					}
					found[r.pathPrefix] = sname
					var row *pathRoute
					for i := range routes {
						if routes[i].path == r.pathPrefix {
							row = &routes[i]
						}
					}
					if row == nil || row.in[name] == "" {
						t.Errorf("%s: service %s routes %s, which the path map of docs/DEPLOY.md does not give to this file", name, sname, r.pathPrefix)
						continue
					}
					if row.in[name] != sname {
						t.Errorf("%s: %s goes to service %s, the path map says %s", name, r.pathPrefix, sname, row.in[name])
					}
					checkStrip(t, name, sname, r, labels, row.strip)
					checkServicePort(t, c, name, sname, svc, r, labels)
					if r.labels["priority"] == "" {
						t.Errorf("%s: router %s: no priority (a catch-all / router must never win over it)", name, r.name)
					}
					if name == "compose.yml" {
						checkProdRouter(t, c, sname, svc, r, labels)
					}
				}
			}
			for _, row := range routes {
				if row.in[name] != "" && found[row.path] == "" {
					t.Errorf("%s: the path map routes %s to %s here, but no router has PathPrefix(`%s`)", name, row.path, row.in[name], row.path)
				}
			}
		})
	}
}

func checkStrip(t *testing.T, file, sname string, r router, labels map[string]string, want bool) {
	t.Helper()
	var prefixes []string
	for _, mw := range strings.Split(r.labels["middlewares"], ",") {
		mw = strings.TrimSpace(strings.TrimSuffix(mw, "@docker"))
		if p, ok := labels["traefik.http.middlewares."+mw+".stripprefix.prefixes"]; ok {
			prefixes = append(prefixes, strings.Split(p, ",")...)
		}
	}
	has := slices.Contains(prefixes, r.pathPrefix)
	if has != want {
		t.Errorf("%s: service %s router %s: strip prefix %s is %v, the path map says %v", file, sname, r.name, r.pathPrefix, has, want)
	}
}

// checkServicePort: the router's load-balancer port is the one the
// container listens on (HTTP_ADDR for a worker; the router's service
// port label otherwise must at least be set).
func checkServicePort(t *testing.T, c *composeFile, file, sname string, svc map[string]any, r router, labels map[string]string) {
	t.Helper()
	lb := r.labels["service"]
	if lb == "" {
		t.Errorf("%s: router %s: no service label", file, r.name)
		return
	}
	port := labels["traefik.http.services."+lb+".loadbalancer.server.port"]
	if port == "" {
		t.Errorf("%s: router %s: service %s has no loadbalancer.server.port", file, r.name, lb)
		return
	}
	if workerOf(svc) == "" {
		return
	}
	if workerOf(svc) == "trm-dev" {
		// The dev binary listens on its own loopback only; a socat sidecar in
		// its network namespace listens for Traefik.
		for side, s := range c.services() {
			if s["network_mode"] != "service:"+sname {
				continue
			}
			listens, forwards := false, false
			want := "TCP:127.0.0.1:" + devBroadcasterPort(t)
			for _, arg := range asStrings(s["command"]) {
				if rest, ok := strings.CutPrefix(arg, "TCP-LISTEN:"); ok {
					p, _, _ := strings.Cut(rest, ",")
					listens = listens || p == port
				}
				forwards = forwards || arg == want
			}
			if !listens {
				t.Errorf("%s: router %s sends to port %s, which sidecar %s does not listen on", file, r.name, port, side)
			}
			if !forwards {
				t.Errorf("%s: sidecar %s does not forward to %s, the broadcaster of trm-dev (scripts/cmd/trm-dev/workers.go)", file, side, want)
			}
			return
		}
		t.Errorf("%s: router %s: service %s runs trm-dev and has no sidecar listening for Traefik", file, r.name, sname)
		return
	}
	env, _ := c.serviceEnv(t, svc)
	addr := env["HTTP_ADDR"]
	if _, p, ok := strings.Cut(addr, ":"); !ok || strings.TrimPrefix(p, ":") != port {
		t.Errorf("%s: service %s listens on %q but router %s sends to port %s", file, sname, addr, r.name, port)
	}
}

func checkProdRouter(t *testing.T, c *composeFile, sname string, svc map[string]any, r router, labels map[string]string) {
	t.Helper()
	if r.host == "" || !strings.Contains(r.rule, "&&") {
		t.Errorf("compose.yml: router %s: rule %q must be Host(...) && PathPrefix(...)", r.name, r.rule)
	}
	if r.labels["entrypoints"] != "websecure" {
		t.Errorf("compose.yml: router %s: entrypoints %q, want websecure", r.name, r.labels["entrypoints"])
	}
	if r.labels["tls"] != "true" {
		t.Errorf("compose.yml: router %s: tls %q, want true", r.name, r.labels["tls"])
	}
	netName := labels["traefik.docker.network"]
	var onIt bool
	for _, n := range networksOf(svc) {
		decl := asMap(asMap(c.doc["networks"])[n])
		if decl["external"] == true && fmt.Sprint(decl["name"]) == netName {
			onIt = true
		}
	}
	if !onIt {
		t.Errorf("compose.yml: service %s: traefik.docker.network %q is not an external network the service is on", sname, netName)
	}
	if _, ok := svc["container_name"]; ok {
		t.Errorf("compose.yml: service %s has container_name, so it cannot be scaled", sname)
	}
	if _, ok := svc["ports"]; ok {
		t.Errorf("compose.yml: service %s publishes ports; Traefik reaches it on the proxy network", sname)
	}
}

// TestComposeStageProdShape: restart policies and limits on every service,
// three NATS nodes with storage, streams at three replicas.
func TestComposeStageProdShape(t *testing.T) {
	t.Parallel()
	c := loadCompose(t, "compose.yml")
	natsNodes := 0
	for sname, svc := range c.services() {
		if svc["restart"] != "unless-stopped" && svc["restart"] != "always" {
			t.Errorf("service %s: restart %v, want unless-stopped or always", sname, svc["restart"])
		}
		limits := asMap(asMap(asMap(svc["deploy"])["resources"])["limits"])
		if limits["cpus"] == nil || limits["memory"] == nil {
			t.Errorf("service %s: no deploy.resources.limits cpus and memory", sname)
		}
		if strings.HasPrefix(sname, "nats-") {
			natsNodes++
			env := kv(svc["environment"])
			if env["NATS_SERVER_NAME"] != sname {
				t.Errorf("service %s: NATS_SERVER_NAME %q", sname, env["NATS_SERVER_NAME"])
			}
			var store bool
			for _, v := range asStrings(svc["volumes"]) {
				if strings.HasSuffix(v, ":/data") {
					store = true
				}
			}
			if !store {
				t.Errorf("service %s: no volume on /data (the JetStream store)", sname)
			}
		}
	}
	if natsNodes != 3 {
		t.Errorf("%d NATS nodes, want 3", natsNodes)
	}
	bridgeEnv := kv(c.services()["bridge"]["environment"])
	if bridgeEnv["STREAM_REPLICAS"] != "3" {
		t.Errorf("bridge STREAM_REPLICAS %q, want 3", bridgeEnv["STREAM_REPLICAS"])
	}
}

// devBroadcasterPort reads the broadcaster's HTTP port from the dev
// binary's workers list.
func devBroadcasterPort(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "scripts", "cmd", "trm-dev", "workers.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`name:\s*"broadcaster",\s*port:\s*(\d+)`).FindSubmatch(raw)
	if m == nil {
		t.Fatal(`scripts/cmd/trm-dev/workers.go: no {name: "broadcaster", port: N} entry`)
	}
	return string(m[1])
}

// TestEnvExampleDefaults: a setting documented as "# NAME=value" in a
// worker's env example claims value is the default. Setting it must not
// change the worker's effective configuration.
func TestEnvExampleDefaults(t *testing.T) {
	t.Parallel()
	dir := deployDir(t)
	for _, w := range devWorkers {
		spec := workerSpecs[w]
		env := map[string]string{}
		var documented map[string]bool
		for _, f := range []string{"common", w} {
			set, doc, err := readEnvFile(filepath.Join(dir, "env", f+".env.example"))
			if err != nil {
				t.Fatal(err)
			}
			fillSecrets(set)
			for k, v := range set {
				env[k] = v
			}
			if f == w {
				documented = doc
			}
		}
		env["NATS_URL"] = "nats://nats-1:4222"
		base, err := spec.config(func(k string) string { return env[k] })
		if err != nil {
			t.Fatalf("%s: %v", w, err)
		}
		raw, err := os.ReadFile(filepath.Join(dir, "env", w+".env.example"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`(?m)^#\s*([A-Z][A-Z0-9_]*)=(\S+)\s*$`).FindAllStringSubmatch(string(raw), -1) {
			name, val := m[1], m[2]
			if _, set := env[name]; set || !documented[name] {
				continue
			}
			cfg, err := spec.config(func(k string) string {
				if k == name {
					return val
				}
				return env[k]
			})
			if err != nil {
				t.Errorf("env/%s.env.example: # %s=%s is refused: %v", w, name, val, err)
				continue
			}
			if cfg.String() != base.String() {
				t.Errorf("env/%s.env.example: # %s=%s is not the default:\n default: %s\n with it: %s", w, name, val, base, cfg)
			}
		}
	}
}
