package contract

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"unicode"
)

// RedactURLs hides the secrets of a connection setting, for logs and
// error messages. The setting is one URL, a comma-separated list of URLs
// (NATS_URL may name several servers, each with its own credentials), or a
// key=value DSN (host=db password=…). Hidden, each replaced by xxxxx: the
// password of user:password@; a user without a password, which NATS reads
// as a token; the query parameters password, sslpassword, token and
// access_token; and password=… of a DSN. A URL that does not parse (a
// trailing newline, a space, a bad % escape) keeps its shape with
// everything before its last @ hidden, so an error can show what is wrong
// with it. Every worker logs its settings and reports a bad one through
// this one function.
func RedactURLs(s string) string {
	if !strings.Contains(s, "://") {
		s = dsnPassword.ReplaceAllString(s, "${1}xxxxx")
		if i := strings.LastIndex(s, "@"); i >= 0 {
			// user:password@host without a scheme, as nats.go accepts.
			s = "xxxxx" + s[i:]
		}
		return s
	}
	// Split at the commas that start another URL only: a password may
	// hold a comma.
	var parts []string
	for start, i := 0, 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' && schemePrefix.MatchString(s[i+1:]) {
			parts = append(parts, redactURL(s[start:i]))
			start = i + 1
		}
	}
	return strings.Join(parts, ",")
}

var (
	dsnPassword  = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|[^\s&]+)`)
	querySecret  = regexp.MustCompile(`(?i)([?&;](?:password|sslpassword|token|access_token)=)[^&;#]*`)
	schemePrefix = regexp.MustCompile(`^\s*[A-Za-z][A-Za-z0-9+.\-]*://`)
	plainUser    = regexp.MustCompile(`^[A-Za-z0-9._~\-]*$`)
)

const unparsableURL = "<unparsable URL>"

func redactURL(s string) string {
	trimmed := strings.TrimSpace(s)
	u, err := url.Parse(trimmed)
	// An @ after the host means part of the user information was read as
	// host, port or path (an unescaped / or # in a password).
	if err != nil || trimmed != s || u.User == nil && strings.Contains(s, "@") {
		return redactRaw(s)
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
			case "password", "sslpassword", "token", "access_token":
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

// redactRaw masks a URL net/url cannot read, or one with surrounding
// whitespace, without parsing it: the user information is everything
// between the scheme and the last @ (a password may hold an unescaped / or
// @, so the last @ of the whole value is taken), and secret query
// parameters are masked by name.
func redactRaw(s string) string {
	m := schemePrefix.FindStringIndex(s)
	if m == nil {
		return unparsableURL
	}
	head, rest := s[:m[1]], s[m[1]:]
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if user, _, ok := strings.Cut(rest[:at], ":"); ok && plainUser.MatchString(user) {
			rest = user + ":xxxxx" + rest[at:]
		} else {
			// A token, or a user name that is itself malformed.
			rest = "xxxxx" + rest[at:]
		}
	}
	return head + querySecret.ReplaceAllString(rest, "${1}xxxxx")
}

// ParseURL parses one URL of a connection setting. On failure its error
// names the setting, shows the value through RedactURLs and says what is
// wrong in words: it never wraps url.Parse's error, which repeats the
// whole value, password included. Surrounding whitespace is an error too:
// a secret file often ends in a newline, and the clients would read the
// value differently from what was meant.
func ParseURL(setting, value string) (*url.URL, error) {
	problem := ""
	var u *url.URL
	switch {
	case strings.ContainsFunc(value, unicode.IsControl):
		problem = "contains a control character (a trailing newline?)"
	case strings.ContainsFunc(value, unicode.IsSpace):
		problem = "contains whitespace"
	default:
		var err error
		u, err = url.Parse(value)
		var escape url.EscapeError
		switch {
		case errors.As(err, &escape):
			problem = "bad % escape (write a literal % as %25)"
		case err != nil:
			problem = "not a URL"
		case u.User == nil && strings.Contains(value, "@"):
			problem = "an @ after the host (write / ? # in a password as %2F %3F %23)"
		}
	}
	if problem != "" {
		return nil, fmt.Errorf("%s %q: %s", setting, RedactURLs(value), problem)
	}
	return u, nil
}
