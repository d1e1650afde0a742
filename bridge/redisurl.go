package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"trm-live/contract"
)

// redisMode is the kind of Redis deployment REDIS_URL names.
type redisMode int

const (
	redisSingle   redisMode = iota // one server: redis:// or rediss://
	redisCluster                   // Redis Cluster: redis+cluster://
	redisSentinel                  // a Sentinel-managed master: redis+sentinel://
)

func (m redisMode) String() string {
	return [...]string{"single", "cluster", "sentinel"}[m]
}

// redisTarget is a parsed REDIS_URL: the mode and the options of its client.
type redisTarget struct {
	mode     redisMode
	single   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
}

// clusterStateReload is how often the cluster client reloads the slot map
// without being asked (a failed call asks at once; see redisError).
const clusterStateReload = 10 * time.Second

// Default ports of the host lists when a host has none.
const (
	defaultRedisPort    = "6379"
	defaultSentinelPort = "26379"
)

// parseRedisURL reads REDIS_URL in one of three forms:
//
//	redis[s]://[[user]:password@]host:port[/db][?options]           one server
//	redis[s]+cluster://[[user]:password@]h1:p1,h2:p2,...[/][?options]  Redis Cluster (seed nodes)
//	redis[s]+sentinel://[[user]:password@]s1:p1,s2:p2,.../master[/db][?options]  Sentinel
//
// The options are go-redis's URL options (dial_timeout, read_timeout, ...).
// The credentials are the Redis servers' (for Sentinel: the master's and
// its replicas'); sentinelPassword (REDIS_SENTINEL_PASSWORD) authenticates
// to the sentinels themselves. Errors never include the password.
func parseRedisURL(raw, sentinelPassword string) (redisTarget, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return redisTarget{}, errors.New("want redis://, rediss://, redis+cluster:// or redis+sentinel://")
	}
	base, kind, _ := strings.Cut(scheme, "+")
	if base != "redis" && base != "rediss" {
		return redisTarget{}, fmt.Errorf("scheme %q: want redis, rediss, redis+cluster or redis+sentinel", scheme)
	}
	switch kind {
	case "":
		o, err := redis.ParseURL(raw)
		if err != nil {
			return redisTarget{}, errors.New(contract.RedactURLs(err.Error()))
		}
		if o.Addr == "" || strings.HasPrefix(o.Addr, ":") {
			return redisTarget{}, errors.New("no host")
		}
		return redisTarget{mode: redisSingle, single: o}, nil
	case "cluster", "sentinel":
	default:
		return redisTarget{}, fmt.Errorf("scheme %q: want redis, rediss, redis+cluster or redis+sentinel", scheme)
	}

	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	var user *url.Userinfo
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		u, err := url.Parse("x://" + authority[:i] + "@h")
		if err != nil || u.User == nil {
			return redisTarget{}, errors.New("unreadable user or password (percent-encode special characters)")
		}
		user, authority = u.User, authority[i+1:]
	}
	path, rawQuery, _ := strings.Cut(tail, "?")
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return redisTarget{}, fmt.Errorf("query: %v", err)
	}
	for _, k := range []string{"addr", "master_name", "db", "username", "password", "sentinel_password"} {
		if query.Has(k) {
			return redisTarget{}, fmt.Errorf("option %q not allowed: hosts, master name, db and credentials go in the URL itself", k)
		}
	}
	defPort := defaultRedisPort
	if kind == "sentinel" {
		defPort = defaultSentinelPort
	}
	var hosts []string
	for _, h := range strings.Split(authority, ",") {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil && !strings.ContainsAny(h, ":[]") {
			host, port, err = h, defPort, nil
		}
		if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || host == "" || strings.ContainsAny(host, "[]/") {
			return redisTarget{}, fmt.Errorf("bad host %q: want host:port", h)
		}
		hosts = append(hosts, net.JoinHostPort(host, port))
	}
	if len(hosts) == 0 {
		return redisTarget{}, errors.New("no host")
	}
	// go-redis's own URL parsers take the first host in the authority and
	// the others as addr options.
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	for _, h := range hosts[1:] {
		q.Add("addr", h)
	}
	segs := strings.FieldsFunc(path, func(r rune) bool { return r == '/' })

	if kind == "cluster" {
		if len(segs) > 1 || len(segs) == 1 && segs[0] != "0" {
			return redisTarget{}, fmt.Errorf("path %q: a cluster has only database 0", path)
		}
		u := url.URL{Scheme: base, User: user, Host: hosts[0], RawQuery: q.Encode()}
		o, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return redisTarget{}, errors.New(contract.RedactURLs(err.Error()))
		}
		clearServerName(o.TLSConfig)
		return redisTarget{mode: redisCluster, cluster: o}, nil
	}

	if len(segs) < 1 || len(segs) > 2 {
		return redisTarget{}, fmt.Errorf("path %q: want /<master name>[/<db>]", path)
	}
	q.Set("master_name", segs[0])
	if len(segs) == 2 {
		q.Set("db", segs[1])
	}
	u := url.URL{Scheme: base, Host: hosts[0], RawQuery: q.Encode()}
	o, err := redis.ParseFailoverURL(u.String())
	if err != nil {
		return redisTarget{}, errors.New(contract.RedactURLs(err.Error()))
	}
	// ParseFailoverURL reads the URL's credentials as the sentinels'; ours
	// are the data nodes'.
	o.SentinelUsername, o.SentinelPassword = "", sentinelPassword
	if user != nil {
		o.Username = user.Username()
		o.Password, _ = user.Password()
	}
	clearServerName(o.TLSConfig)
	return redisTarget{mode: redisSentinel, failover: o}, nil
}

// clearServerName drops the TLS server name go-redis's URL parsers take
// from the first host: with several hosts (and the nodes or master they
// lead to) each connection must be verified against its own host, which
// the TLS dialer does when the name is empty.
func clearServerName(c *tls.Config) {
	if c != nil {
		c.ServerName = ""
	}
}

// client returns a new client of the target. None retries a command on
// its own (every call sits in a retry loop of the bridge that knows what
// a lost reply means); the cluster client still follows MOVED and ASK
// redirections, and retries once a command whose connection broke (see
// docs/bridge.md: such a lost read is claimed back after
// BRIDGE_CLAIM_MIN_IDLE).
func (t redisTarget) client() redis.UniversalClient {
	switch t.mode {
	case redisCluster:
		o := *t.cluster
		o.MaxRetries = -1
		o.ClusterStateReloadInterval = clusterStateReload
		return redis.NewClusterClient(&o)
	case redisSentinel:
		o := *t.failover
		o.MaxRetries = -1
		return redis.NewFailoverClient(&o)
	default:
		o := *t.single
		o.MaxRetries = -1
		return redis.NewClient(&o)
	}
}

// rawBlockMax is the longest XREADGROUP BLOCK a raw read may ask for:
// the connection's read timeout (go-redis's default 3 s when the URL sets
// none) less a margin, or no bound when reads have no deadline.
func (t redisTarget) rawBlockMax() time.Duration {
	var d time.Duration
	switch t.mode {
	case redisCluster:
		d = t.cluster.ReadTimeout
	case redisSentinel:
		d = t.failover.ReadTimeout
	default:
		d = t.single.ReadTimeout
	}
	switch {
	case d == 0:
		d = 3 * time.Second
	case d < 0:
		return time.Duration(math.MaxInt64)
	}
	return d - min(d/2, time.Second)
}

// redactRedisURL is REDIS_URL with its password masked, for logs and
// errors. contract.RedactURLs handles the single form; the host lists of
// the other forms are not URLs it can parse.
func redactRedisURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || !strings.Contains(scheme, "+") {
		return contract.RedactURLs(raw)
	}
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		userinfo := authority[:i]
		if name, _, hasPass := strings.Cut(userinfo, ":"); hasPass {
			userinfo = name + ":xxxxx"
		} else {
			userinfo = "xxxxx"
		}
		authority = userinfo + authority[i:]
	}
	if path, rawQuery, ok := strings.Cut(tail, "?"); ok {
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			return scheme + "://" + authority + path + "?<unreadable options>"
		}
		for k := range q {
			switch strings.ToLower(k) {
			case "password", "sentinel_password", "token":
				q.Set(k, "xxxxx")
			}
		}
		tail = path + "?" + q.Encode()
	}
	return scheme + "://" + authority + tail
}

// redisError counts a failed Redis call. On a cluster it also asks the
// client to reload the slot map: go-redis follows MOVED by itself, but a
// master that died leaves only connection errors, and without a reload
// the client would keep calling the dead node until its periodic refresh.
func (b *bridge) redisError() {
	b.m.redisErrors.Inc()
	if cc, ok := b.rdb.(*redis.ClusterClient); ok {
		cc.ReloadState(context.Background())
	}
}
