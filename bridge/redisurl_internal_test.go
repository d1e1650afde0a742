package bridge

import (
	"reflect"
	"strings"
	"testing"
)

// Each REDIS_URL form yields the client options it describes.
func TestParseRedisURL(t *testing.T) {
	single, err := parseRedisURL("rediss://u:pw@r:6380/2", "")
	if err != nil || single.mode != redisSingle || single.single.Addr != "r:6380" || single.single.DB != 2 ||
		single.single.Password != "pw" || single.single.TLSConfig == nil {
		t.Fatalf("single: %+v %v", single, err)
	}

	cl, err := parseRedisURL("redis+cluster://:pw@a:7000,b:7001, c ,[::1]:7003/?dial_timeout=2s", "")
	if err != nil || cl.mode != redisCluster {
		t.Fatalf("cluster: %v", err)
	}
	if want := []string{"a:7000", "b:7001", "c:6379", "[::1]:7003"}; !reflect.DeepEqual(cl.cluster.Addrs, want) {
		t.Errorf("cluster addrs %v, want %v", cl.cluster.Addrs, want)
	}
	if cl.cluster.Password != "pw" || cl.cluster.DialTimeout.String() != "2s" || cl.cluster.TLSConfig != nil {
		t.Errorf("cluster options: %+v", cl.cluster)
	}
	// TLS over several hosts: each connection is verified against its own
	// host name, not the first host's.
	if tls, err := parseRedisURL("rediss+cluster://a:7000,b:7001", ""); err != nil || tls.cluster.TLSConfig == nil || tls.cluster.TLSConfig.ServerName != "" {
		t.Errorf("rediss+cluster: %+v %v", tls.cluster, err)
	}
	if tls, err := parseRedisURL("rediss+sentinel://s1,s2/m", ""); err != nil || tls.failover.TLSConfig == nil || tls.failover.TLSConfig.ServerName != "" {
		t.Errorf("rediss+sentinel: %+v %v", tls.failover, err)
	}

	se, err := parseRedisURL("redis+sentinel://app:pw@s1:26379,s2/mymaster/3", "sentpw")
	if err != nil || se.mode != redisSentinel {
		t.Fatalf("sentinel: %v", err)
	}
	f := se.failover
	if want := []string{"s1:26379", "s2:26379"}; !reflect.DeepEqual(f.SentinelAddrs, want) {
		t.Errorf("sentinel addrs %v, want %v", f.SentinelAddrs, want)
	}
	if f.MasterName != "mymaster" || f.DB != 3 || f.Username != "app" || f.Password != "pw" ||
		f.SentinelPassword != "sentpw" || f.SentinelUsername != "" {
		t.Errorf("sentinel options: %+v", f)
	}
}

// A bad REDIS_URL is refused, and neither the error nor the redacted form
// shows the password.
func TestBadRedisURLs(t *testing.T) {
	for _, u := range []string{
		"localhost",
		"http://:pw@r:6379",
		"redis+nope://:pw@a:1",
		"redis+cluster://:pw@/",
		"redis+cluster://:pw@a:1,b:2/1",
		"redis+cluster://:pw@a:1?addr=b:2",
		"redis+cluster://:pw@a:1?no_such_option=1",
		"redis+sentinel://:pw@s1:26379",
		"redis+sentinel://:pw@s1:26379/m/x",
		"redis+sentinel://:pw@s1:26379/m/0/extra",
		"redis+sentinel://:pw@s1:26379/m?password=pw",
		"redis+sentinel://:pw@s1:notaport/m",
	} {
		_, err := parseRedisURL(u, "")
		if err == nil {
			t.Errorf("%s: accepted", u)
			continue
		}
		if strings.Contains(err.Error(), "pw") {
			t.Errorf("%s: error shows the password: %v", u, err)
		}
		if r := redactRedisURL(u); strings.Contains(r, "pw") {
			t.Errorf("%s: redacted as %s", u, r)
		}
	}
	if r := redactRedisURL("redis+sentinel://app:s3cret@s1:26379,s2:26379/m/0?dial_timeout=1s"); r != "redis+sentinel://app:xxxxx@s1:26379,s2:26379/m/0?dial_timeout=1s" {
		t.Errorf("redacted: %s", r)
	}
}
