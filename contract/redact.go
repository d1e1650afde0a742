package contract

import (
	"net/url"
	"regexp"
	"strings"
)

// RedactURLs hides the secrets of a connection setting, for logs and
// error messages. The setting is one URL, a comma-separated list of URLs
// (NATS_URL may name several servers, each with its own credentials), or a
// key=value DSN (host=db password=…). Hidden, each replaced by xxxxx: the
// password of user:password@; a user without a password, which NATS reads
// as a token; the query parameters password, token and access_token; and
// password=… of a DSN. A URL that does not parse is replaced whole.
// Every worker logs its settings through this one function.
func RedactURLs(s string) string {
	if !strings.Contains(s, "://") {
		return dsnPassword.ReplaceAllString(s, "${1}xxxxx")
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = redactURL(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

var dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|[^\s&]+)`)

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparsable URL>"
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else if u.User.Username() != "" {
			u.User = url.User("xxxxx")
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		changed := false
		for k := range q {
			switch strings.ToLower(k) {
			case "password", "token", "access_token":
				q.Set(k, "xxxxx")
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
		}
	}
	return u.String()
}
