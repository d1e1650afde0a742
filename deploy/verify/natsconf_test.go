package verify

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"testing"
)

// syncPerEnvironment is jetstream.sync_interval per node configuration, as
// docs/DEPLOY.md ("The lazy-fsync window") chooses it.
var syncPerEnvironment = map[string]bool{ // file -> sync always
	"stage.conf": true,
	"prod.conf":  true,
}

func TestNATSConfigFiles(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(deployDir(t), "nats")
	for file, always := range syncPerEnvironment {
		o, err := LoadConfigFile(filepath.Join(dir, file))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if o.SyncAlways != always {
			t.Errorf("%s: sync_interval always = %v, docs/DEPLOY.md says %v", file, o.SyncAlways, always)
		}
		if !o.JetStream || o.StoreDir != "/data" {
			t.Errorf("%s: JetStream %v store %q, want enabled on /data (the compose volume)", file, o.JetStream, o.StoreDir)
		}
		if o.Cluster.Name == "" || o.Cluster.Port != 6222 || o.Cluster.Username != "route" || o.Cluster.Password == "" {
			t.Errorf("%s: cluster %q port %d user %q: want a named cluster on 6222 with route credentials", file, o.Cluster.Name, o.Cluster.Port, o.Cluster.Username)
		}
		if o.SystemAccount != "SYS" {
			t.Errorf("%s: system account %q", file, o.SystemAccount)
		}
		var users []string
		for _, u := range o.Users {
			users = append(users, u.Username)
			if u.Account == nil {
				t.Errorf("%s: user %s has no account", file, u.Username)
				continue
			}
			switch {
			case u.Username == "sys":
				if u.Account.Name != "SYS" {
					t.Errorf("%s: user sys in account %s", file, u.Account.Name)
				}
			case u.Account.Name != "TRM":
				t.Errorf("%s: user %s in account %s, want TRM", file, u.Username, u.Account.Name)
			case u.Username != "ops" && u.Permissions == nil:
				t.Errorf("%s: worker user %s has no permissions", file, u.Username)
			}
		}
		sort.Strings(users)
		want := append(slices.Clone(Users), "sys")
		sort.Strings(want)
		if !slices.Equal(users, want) {
			t.Errorf("%s: users %v, want %v", file, users, want)
		}
	}
}

var confVar = regexp.MustCompile(`(?:^|[\s:=\[,])\$([A-Z][A-Z0-9_]*)`) // unquoted: "$JS.API..." is a subject

// TestNATSConfigVariablesSet: every variable the NATS configuration reads
// is set on every NATS node of deploy/compose.yml, and NATS_CONF names an
// existing configuration.
func TestNATSConfigVariablesSet(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(deployDir(t), "nats")
	files, _ := filepath.Glob(filepath.Join(dir, "*.conf"))
	needed := map[string]bool{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range regexp.MustCompile(`(?m)^[^#]*`).FindAllString(string(raw), -1) {
			for _, m := range confVar.FindAllStringSubmatch(line, -1) {
				needed[m[1]] = true
			}
		}
	}
	if len(needed) < 8 {
		t.Fatalf("only %d variables found in deploy/nats/*.conf: %v", len(needed), needed)
	}
	c := loadCompose(t, "compose.yml")
	nodes := 0
	for sname, svc := range c.services() {
		img, _ := svc["image"].(string)
		if !regexp.MustCompile(`^nats:`).MatchString(img) {
			continue
		}
		nodes++
		env := kv(svc["environment"])
		for v := range needed {
			if env[v] == "" {
				t.Errorf("compose.yml: NATS node %s does not set %s, which deploy/nats reads", sname, v)
			}
		}
	}
	if nodes != 3 {
		t.Errorf("%d NATS nodes in compose.yml", nodes)
	}
	if _, err := os.Stat(filepath.Join(dir, c.vars["NATS_CONF"]+".conf")); err != nil {
		t.Errorf("compose.env.example NATS_CONF=%s: %v", c.vars["NATS_CONF"], err)
	}
}
