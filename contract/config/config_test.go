package config

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

type cfg struct {
	URL    string
	Secret string
	N      int
	Rate   float64
	On     bool
	Wait   time.Duration
	Keys   []string
}

func table() []Setting[cfg] {
	return []Setting[cfg]{
		String("NATS_URL", "nats://127.0.0.1:4222", "NATS server URL", func(c *cfg) *string { return &c.URL }),
		String("W_SECRET", "", "a password", func(c *cfg) *string { return &c.Secret }).EnvOnly(),
		Int("W_BATCH_SIZE", 10, "items per batch", func(c *cfg) *int { return &c.N }),
		Float("W_RATE", 2.5, "per second", func(c *cfg) *float64 { return &c.Rate }),
		Bool("W_ON", "switch", func(c *cfg) *bool { return &c.On }),
		Duration("W_WAIT", time.Second, "how long", func(c *cfg) *time.Duration { return &c.Wait }),
		List("W_KEYS", "a,b", "keys", func(c *cfg) *[]string { return &c.Keys }),
	}
}

func load(args []string, env map[string]string) (cfg, error) {
	return Load(flag.NewFlagSet("w", flag.ContinueOnError), "W_", table(), args, func(k string) string { return env[k] })
}

func TestLoadDefaultsEnvFlags(t *testing.T) {
	c, err := load(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.URL != "nats://127.0.0.1:4222" || c.N != 10 || c.Rate != 2.5 || c.On || c.Wait != time.Second || strings.Join(c.Keys, "|") != "a|b" {
		t.Fatalf("defaults: %+v", c)
	}
	c, err = load([]string{"-batch-size", "7", "-on", "-keys", " x, ,y "}, map[string]string{
		"W_BATCH_SIZE": "99", "W_WAIT": "2m", "W_SECRET": "pw", "NATS_URL": "nats://n:4222", "W_RATE": "",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.N != 7 || !c.On || c.Wait != 2*time.Minute || c.Secret != "pw" || c.URL != "nats://n:4222" || c.Rate != 2.5 ||
		strings.Join(c.Keys, "|") != "x|y" {
		t.Fatalf("a flag wins over its variable, a variable over the default, empty is unset: %+v", c)
	}
	if c, err = load([]string{"-on=false"}, map[string]string{"W_ON": "true"}); err != nil || c.On {
		t.Fatalf("-on=false over W_ON=true: %+v %v", c, err)
	}
}

func TestLoadErrorsNameTheSetting(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, map[string]string{"W_BATCH_SIZE": "many"}, `W_BATCH_SIZE (-batch-size) = "many": not an integer`},
		{[]string{"-wait", "soon"}, nil, `W_WAIT (-wait) = "soon": not a duration`},
		{nil, map[string]string{"W_RATE": "fast"}, `W_RATE (-rate) = "fast": not a number`},
		{nil, map[string]string{"W_ON": "perhaps"}, `W_ON (-on) = "perhaps": not true or false`},
		{[]string{"-secret", "pw"}, nil, "-secret"}, // EnvOnly: no flag
		{[]string{"-nope"}, nil, "-nope"},
		{[]string{"extra"}, nil, `unexpected argument "extra"`},
	} {
		_, err := load(tc.args, tc.env)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("args %v env %v: %v, want an error with %s", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	// -version wins over bad values: nothing is read or validated.
	if _, err := load([]string{"-version"}, map[string]string{"W_BATCH_SIZE": "many"}); !errors.Is(err, ErrVersion) {
		t.Fatalf("-version: %v", err)
	}
	var out, errOut bytes.Buffer
	if code := Exit(&out, &errOut, "bridge", "1.2.3", "abc", ErrVersion); code != 0 ||
		out.String() != "bridge 1.2.3 (revision abc)\n" || errOut.Len() != 0 {
		t.Fatalf("version: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
	out.Reset()
	if Exit(&out, &errOut, "bridge", "", "abc", ErrVersion); out.String() != "bridge dev (revision abc)\n" {
		t.Fatalf("unstamped version: %q", out.String())
	}

	_, err := load([]string{"-h"}, nil)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	out.Reset()
	if code := Exit(&out, &errOut, "w", "", "", err); code != 0 || out.Len() != 0 ||
		!strings.Contains(errOut.String(), "-batch-size") || !strings.Contains(errOut.String(), "-batch-size W_BATCH_SIZE\n") ||
		!strings.Contains(errOut.String(), "-version") || strings.Contains(errOut.String(), "W_SECRET") {
		t.Fatalf("help: exit %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	if code := Exit(&out, &errOut, "w", "", "", errors.New("W_X: bad")); code != 1 || errOut.String() != "w: W_X: bad\n" {
		t.Fatalf("error: exit %d, stderr %q", code, errOut.String())
	}
}

func TestFill(t *testing.T) {
	c := cfg{N: 3, Rate: -1}
	Fill(&c, table())
	if c.N != 3 || c.Rate != -1 || c.URL != "nats://127.0.0.1:4222" || c.Wait != time.Second || len(c.Keys) != 2 || c.Secret != "" {
		t.Fatalf("Fill sets only zero fields: %+v", c)
	}
}

func TestLog(t *testing.T) {
	for _, ok := range [][2]string{{"", ""}, {"debug", "json"}, {"WARN", "JSON"}, {"error", "text"}} {
		if err := CheckLog(ok[0], ok[1]); err != nil {
			t.Errorf("%q %q: %v", ok[0], ok[1], err)
		}
	}
	if err := CheckLog("loud", ""); err == nil || !strings.Contains(err.Error(), "LOG_LEVEL") {
		t.Errorf("bad level: %v", err)
	}
	if err := CheckLog("", "xml"); err == nil || !strings.Contains(err.Error(), "LOG_FORMAT") {
		t.Errorf("bad format: %v", err)
	}
	var b bytes.Buffer
	l := NewLogger(&b, "warn", "json")
	l.Info("hidden")
	l.Warn("shown")
	if s := b.String(); strings.Contains(s, "hidden") || !strings.HasPrefix(s, `{"time":`) || !strings.Contains(s, `"msg":"shown"`) {
		t.Fatalf("json at warn: %q", s)
	}
	b.Reset()
	NewLogger(&b, "", "").Info("x")
	if !strings.HasPrefix(b.String(), "time=") {
		t.Fatalf("text at info: %q", b.String())
	}
}

func TestMainExitCode(t *testing.T) {
	var args []string
	code := Main("w", "", "", func(ctx context.Context, a []string) error {
		args = a
		return ctx.Err()
	})
	if code != 0 || len(args) != len(os.Args)-1 {
		t.Fatalf("run returning nil: exit %d, args %q", code, args)
	}
	if code := Main("w", "", "", func(context.Context, []string) error { return errors.New("W_X: bad") }); code != 1 {
		t.Fatalf("run returning an error: exit %d", code)
	}
}
