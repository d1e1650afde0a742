package verify

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Users of deploy/nats/accounts.conf, one per worker plus ops.
var Users = []string{"bridge", "persister", "broadcaster", "authsvc", "ops"}

// PasswordEnv names the environment variable that holds user's password in
// deploy/nats/accounts.conf (NATS_BRIDGE_PASSWORD, ...).
func PasswordEnv(user string) string {
	return "NATS_" + strings.ToUpper(user) + "_PASSWORD"
}

// TestPassword is the password StartCluster gives user: fixed, because
// nats-server reads it from the process environment while parsing the
// configuration file, and every cluster of one process shares that.
func TestPassword(user string) string { return "verify-" + user + "-pw" }

var envOnce sync.Once

// setPasswordEnv exports every password variable accounts.conf and the
// node configurations reference, once per process.
func setPasswordEnv() {
	envOnce.Do(func() {
		for _, u := range append([]string{"route", "sys"}, Users...) {
			os.Setenv(PasswordEnv(u), TestPassword(u))
		}
		// Placeholders for the per-node variables; StartCluster overrides
		// the values they set.
		os.Setenv("NATS_SERVER_NAME", "verify")
		os.Setenv("NATS_ROUTES", "[]")
	})
}

// LoadConfigFile parses a nats-server configuration file the way
// nats-server does, with the test passwords in the environment. Each call
// returns fresh options: accounts must never be shared between servers.
func LoadConfigFile(path string) (*server.Options, error) {
	setPasswordEnv()
	return server.ProcessConfigFile(path)
}

// Cluster is a set of nats-server nodes with cluster routes on loopback,
// embedded in this process.
type Cluster struct {
	mu    sync.Mutex
	nodes []*node
}

type node struct {
	name       string
	conf       string // configuration file, "" for plain options
	dir        string
	clientPort int
	routePort  int
	routes     []*url.URL
	sync       SyncMode
	server     *server.Server
}

// SyncMode overrides jetstream.sync_interval.
type SyncMode int

// Sync modes.
const (
	// SyncFromConfig keeps what the configuration file says (plain options:
	// the server default, a flush every two minutes).
	SyncFromConfig SyncMode = iota
	// SyncAlways fsyncs every write before the ack.
	SyncAlways
	// SyncDefault is the server default: acknowledge, flush every 2 min.
	SyncDefault
)

// ClusterConfig describes the nodes StartCluster starts.
type ClusterConfig struct {
	// Nodes is how many servers; 1 gives a single server without routes.
	Nodes int
	// Dir holds each node's JetStream store (Dir/<name>).
	Dir string
	// ConfigFile, when set, is a deploy/nats node configuration (accounts,
	// users, permissions, JetStream settings); listen addresses, ports,
	// routes, store and monitoring are replaced by loopback ones. Empty:
	// plain options, no authentication.
	ConfigFile string
	// Sync overrides the sync interval.
	Sync SyncMode
}

// StartCluster starts the nodes and waits until each is ready for clients.
// Call Shutdown when done.
func StartCluster(cfg ClusterConfig) (*Cluster, error) {
	if cfg.Nodes < 1 {
		return nil, errors.New("cluster: at least one node")
	}
	c := &Cluster{}
	var routes []*url.URL
	ports, err := freePorts(2 * cfg.Nodes)
	if err != nil {
		return nil, err
	}
	for i := range cfg.Nodes {
		n := &node{
			name: fmt.Sprintf("nats-%d", i+1),
			conf: cfg.ConfigFile,
			sync: cfg.Sync,
		}
		n.dir = filepath.Join(cfg.Dir, n.name)
		n.clientPort, n.routePort = ports[2*i], ports[2*i+1]
		u := &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", n.routePort)}
		if cfg.ConfigFile != "" {
			u.User = url.UserPassword("route", routePassword())
		}
		routes = append(routes, u)
		c.nodes = append(c.nodes, n)
	}
	if cfg.Nodes > 1 {
		for _, n := range c.nodes {
			n.routes = routes
		}
	}
	// Start all before waiting: a clustered JetStream needs its peers to
	// elect a meta leader, and ReadyForConnections waits for JetStream.
	errs := make(chan error, len(c.nodes))
	for i := range c.nodes {
		go func() { errs <- c.start(i) }()
	}
	err = nil
	for range c.nodes {
		err = errors.Join(err, <-errs)
	}
	if err != nil {
		c.Shutdown()
		return nil, err
	}
	return c, nil
}

func routePassword() string {
	setPasswordEnv()
	return os.Getenv(PasswordEnv("route"))
}

func (c *Cluster) options(n *node) (*server.Options, error) {
	var o *server.Options
	if n.conf != "" {
		var err error
		if o, err = LoadConfigFile(n.conf); err != nil {
			return nil, err
		}
	} else {
		o = &server.Options{JetStream: true}
		if len(n.routes) > 0 {
			o.Cluster.Name = "trm"
		}
	}
	o.ServerName = n.name
	o.Host = "127.0.0.1"
	o.Port = n.clientPort
	o.HTTPHost, o.HTTPPort = "", 0
	o.StoreDir = n.dir
	o.JetStreamMaxMemory = 256 << 20
	o.JetStreamMaxStore = 8 << 30
	o.NoLog, o.NoSigs = true, true
	o.Cluster.Host = "127.0.0.1"
	o.Cluster.Port = n.routePort
	o.Routes = n.routes
	if len(n.routes) == 0 {
		o.Cluster = server.ClusterOpts{}
	}
	switch n.sync {
	case SyncAlways:
		o.SyncAlways = true
	case SyncDefault:
		o.SyncAlways, o.SyncInterval = false, 0
	}
	return o, nil
}

func (c *Cluster) start(i int) error {
	n := c.nodes[i]
	o, err := c.options(n)
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	s, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("%s: not ready after 30s", n.name)
	}
	if !s.JetStreamEnabled() {
		s.Shutdown()
		return fmt.Errorf("%s: JetStream did not start", n.name)
	}
	c.mu.Lock()
	n.server = s
	c.mu.Unlock()
	return nil
}

// Size is the number of nodes.
func (c *Cluster) Size() int { return len(c.nodes) }

// Server returns node i's server, nil while it is stopped.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].server
}

// ClientURL is node i's client URL; it survives Stop and Restart.
func (c *Cluster) ClientURL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].clientPort)
}

// URL is the comma-separated client URLs of every node, with user's test
// password when user is not empty: a NATS_URL value.
func (c *Cluster) URL(user string) string {
	var urls []string
	for i := range c.nodes {
		u, _ := url.Parse(c.ClientURL(i))
		if user != "" {
			u.User = url.UserPassword(user, TestPassword(user))
		}
		urls = append(urls, u.String())
	}
	return strings.Join(urls, ",")
}

// Stop shuts node i down, as a crash of its process would (the store stays).
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	s := c.nodes[i].server
	c.nodes[i].server = nil
	c.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// Restart starts node i again on the same ports and store.
func (c *Cluster) Restart(i int) error {
	c.Stop(i)
	return c.start(i)
}

// Shutdown stops every node.
func (c *Cluster) Shutdown() {
	for i := range c.nodes {
		c.Stop(i)
	}
}

// freePorts returns n distinct loopback ports free a moment ago; the
// listeners stay open until all are chosen, since a port closed and asked
// for again can come back.
func freePorts(n int) ([]int, error) {
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}
