package contract

import (
	"strings"
	"testing"
)

func TestRedactURLs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		keep []string // must still be there
	}{
		{"nats://a:s3cret1@n1:4222,nats://b:s3cret2@n2:4222", []string{"a:xxxxx@n1:4222", "b:xxxxx@n2:4222"}},
		{"nats://s3cret@n1:4222", []string{"xxxxx@n1:4222"}}, // a bare user is a NATS token
		{"redis://:s3cret@r:6379/1", []string{":xxxxx@r:6379/1"}},
		{"postgres://u:s3cret@db:5432/trm?sslmode=disable", []string{"u:xxxxx@db:5432/trm", "sslmode=disable"}},
		{"postgres://u@db/trm?password=s3cret&sslmode=disable", []string{"password=xxxxx", "sslmode=disable"}},
		{"https://d/?access_token=s3cret", []string{"access_token=xxxxx"}},
		{"https://d/?Token=s3cret", []string{"Token=xxxxx"}},
		{"host=db user=trm password=s3cret dbname=trm", []string{"host=db", "password=xxxxx", "dbname=trm"}},
		{"host=db password='s3cret with space' dbname=trm", []string{"password=xxxxx", "dbname=trm"}},
		{"http://h:s3cret@[::1:bad", []string{"<unparsable URL>"}},
		{"nats://127.0.0.1:4222", []string{"nats://127.0.0.1:4222"}},
	} {
		got := RedactURLs(tc.in)
		if strings.Contains(got, "s3cret") {
			t.Errorf("RedactURLs(%q) = %q: secret left", tc.in, got)
		}
		for _, k := range tc.keep {
			if !strings.Contains(got, k) {
				t.Errorf("RedactURLs(%q) = %q: lost %q", tc.in, got, k)
			}
		}
	}
}
