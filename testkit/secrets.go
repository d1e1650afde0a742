package testkit

import (
	"strings"
	"testing"
)

// Password is the password FlawedURLs writes into every URL; an error or a
// log line that contains it has leaked a secret.
const Password = "hunter2"

// FlawedURLs fills the %s of tmpl with Password in the ways an operator
// gets a URL setting wrong and the URL parser or the clients refuse it: a
// trailing newline (a secret file), surrounding whitespace, a space in the
// password, a bad % escape, an unescaped / or # in the password.
func FlawedURLs(tmpl string) []string {
	with := func(pw string) string { return strings.Replace(tmpl, "%s", pw, 1) }
	ok := with(Password)
	return []string{
		ok + "\n", ok + " ", " " + ok, ok + "\r\n",
		with(Password + " pw"),
		with(Password + "%zz"),
		with(Password + "%"),
		with("12/" + Password),
		with(Password + "#x"),
	}
}

// RefusedWithoutSecret fails tb unless err refuses the value of setting,
// names the setting and does not show Password.
func RefusedWithoutSecret(tb testing.TB, setting, value string, err error) {
	tb.Helper()
	switch {
	case err == nil:
		tb.Errorf("%s=%q: accepted", setting, value)
	case strings.Contains(err.Error(), Password) || !strings.Contains(err.Error(), setting):
		tb.Errorf("%s=%q: error %q shows the password or does not name the setting", setting, value, err)
	}
}
