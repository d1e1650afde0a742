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
		{"postgres://u@db/trm?sslpassword=s3cret", []string{"sslpassword=xxxxx"}},
		{"postgres://u@db/trm%zz?sslpassword=s3cret", []string{"sslpassword=xxxxx"}},
		{"host=db user=trm password=s3cret dbname=trm", []string{"host=db", "password=xxxxx", "dbname=trm"}},
		{"host=db password='s3cret with space' dbname=trm", []string{"password=xxxxx", "dbname=trm"}},
		{"nats://127.0.0.1:4222", []string{"nats://127.0.0.1:4222"}},
		// Values net/url cannot read keep their shape, secrets masked.
		{"http://h:s3cret@[::1:bad", []string{"http://h:xxxxx@[::1:bad"}},
		{"nats://u:s3cret@n1:4222\n", []string{"nats://u:xxxxx@n1:4222\n"}},
		{"nats://u:s3cret@n1:4222 ", []string{"nats://u:xxxxx@n1:4222 "}},
		{" nats://u:s3cret@n1:4222", []string{" nats://u:xxxxx@n1:4222"}},
		{"nats://u:s3cret%zz@n1:4222", []string{"nats://u:xxxxx@n1:4222"}},
		{"nats://u:s3 cret@n1:4222", []string{"nats://u:xxxxx@n1:4222"}},
		{"nats://u:12/s3cret@n1:4222", []string{"nats://u:xxxxx@n1:4222"}}, // an unescaped / in the password
		{"nats://u:s3cret#1@n1:4222", []string{"nats://u:xxxxx@n1:4222"}},
		{"nats://u:s3,cret@n1:4222", []string{"nats://u:xxxxx@n1:4222"}}, // a comma in the password
		{"nats://a:s3cret\n@n1:4222,nats://b:s3cret@n2:4222", []string{"nats://a:xxxxx@n1:4222,nats://b:xxxxx@n2:4222"}},
		{"nats://s3cr%zzet@n1:4222", []string{"nats://xxxxx@n1:4222"}},
		{"postgres://u:s3%cret@db/trm?sslmode=disable\n", []string{"u:xxxxx@db/trm?sslmode=disable"}},
		{"https://d/x%zz?token=s3cret", []string{"token=xxxxx"}},
		{"u:s3cret@n1:4222", []string{"xxxxx@n1:4222"}}, // no scheme: nats.go adds nats://
	} {
		got := RedactURLs(tc.in)
		if strings.Contains(got, "s3") || strings.Contains(got, "cret") {
			t.Errorf("RedactURLs(%q) = %q: secret left", tc.in, got)
		}
		for _, k := range tc.keep {
			if !strings.Contains(got, k) {
				t.Errorf("RedactURLs(%q) = %q: lost %q", tc.in, got, k)
			}
		}
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in, problem string
	}{
		{"nats://u:s3cret@n1:4222\n", "control character"},
		{"nats://u:s3cret@n1:4222 ", "whitespace"},
		{"nats://u:s3 cret@n1:4222", "whitespace"},
		{"nats://u:s3cret%zz@n1:4222", "bad % escape"},
		{"nats://u:s3cret%@n1:4222", "bad % escape"},
		{"http://h:s3cret@[::1:bad", "not a URL"},
		{"nats://u:12/s3cret@n1:4222", "an @ after the host"},
	} {
		_, err := ParseURL("NATS_URL", tc.in)
		if err == nil {
			t.Errorf("ParseURL(%q): no error", tc.in)
			continue
		}
		msg := err.Error()
		if strings.Contains(msg, "s3") || strings.Contains(msg, "cret") {
			t.Errorf("ParseURL(%q) = %q: secret left", tc.in, msg)
		}
		if !strings.HasPrefix(msg, "NATS_URL ") || !strings.Contains(msg, tc.problem) {
			t.Errorf("ParseURL(%q) = %q: want the setting and %q", tc.in, msg, tc.problem)
		}
	}
	u, err := ParseURL("NATS_URL", "nats://u:p%25w@n1:4222")
	if err != nil {
		t.Fatal(err)
	}
	if pw, _ := u.User.Password(); pw != "p%w" || u.Host != "n1:4222" {
		t.Errorf("ParseURL: password %q host %q", pw, u.Host)
	}
}
