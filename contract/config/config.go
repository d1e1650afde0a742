// Package config reads a worker's settings the one way all four workers do:
// each lists its settings in a table (environment variable, default, usage
// and the Config field it sets), Load reads them from the environment and
// then from the flags (a flag wins), and every error names the setting.
// The flag of a setting is its variable without the worker's prefix, in
// lower case with dashes: BRIDGE_CLAIM_MIN_IDLE is -claim-min-idle,
// NATS_URL is -nats-url.
//
// It also holds what the workers share around their settings: LOG_LEVEL
// and LOG_FORMAT with the logger they describe, the -version flag, and
// Main, the body of every worker's main.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// ErrVersion is returned by Load when -version is given, before anything
// is validated: main prints the version line (Exit) and stops.
var ErrVersion = errors.New("version requested")

// Setting is one row of a worker's table of settings for a Config of type
// C. Build it with String, Int, Float, Bool, Duration, List or Value.
type Setting[C any] struct {
	env, def, usage string
	envOnly, isBool bool
	set             func(c *C, v string) error // parses v into the field
	fill            func(c *C)                 // the default into a zero field
}

// EnvOnly returns s without a flag, for a secret that must stay out of the
// process list.
func (s Setting[C]) EnvOnly() Setting[C] {
	s.envOnly = true
	return s
}

// Value is a setting of any comparable type: parse reads the text of the
// variable or flag, def is the default (also of a zero field, see Fill).
func Value[C any, T comparable](env string, def T, usage string, parse func(string) (T, error), dst func(*C) *T) Setting[C] {
	var zero T
	shown := ""
	if def != zero {
		shown = fmt.Sprint(def)
	}
	return Setting[C]{env: env, def: shown, usage: usage,
		set: func(c *C, v string) error {
			x, err := parse(v)
			if err != nil {
				return err
			}
			*dst(c) = x
			return nil
		},
		fill: func(c *C) {
			if p := dst(c); *p == zero {
				*p = def
			}
		}}
}

// String is a text setting.
func String[C any](env, def, usage string, dst func(*C) *string) Setting[C] {
	return Value(env, def, usage, func(v string) (string, error) { return v, nil }, dst)
}

// Int is an integer setting.
func Int[C any](env string, def int, usage string, dst func(*C) *int) Setting[C] {
	return Value(env, def, usage, func(v string) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, errors.New("not an integer")
		}
		return n, nil
	}, dst)
}

// Float is a number setting.
func Float[C any](env string, def float64, usage string, dst func(*C) *float64) Setting[C] {
	return Value(env, def, usage, func(v string) (float64, error) {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, errors.New("not a number")
		}
		return f, nil
	}, dst)
}

// Bool is a true/false setting (default false); its flag alone means true.
func Bool[C any](env, usage string, dst func(*C) *bool) Setting[C] {
	s := Value(env, false, usage, func(v string) (bool, error) {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, errors.New("not true or false")
		}
		return b, nil
	}, dst)
	s.isBool = true
	return s
}

// Duration is a time.Duration setting such as 5s or 2m.
func Duration[C any](env string, def time.Duration, usage string, dst func(*C) *time.Duration) Setting[C] {
	return Value(env, def, usage, func(v string) (time.Duration, error) {
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, errors.New("not a duration (e.g. 5s, 2m)")
		}
		return d, nil
	}, dst)
}

// List is a comma-separated setting; blanks around items and empty items
// are dropped. def is the default list, comma separated too.
func List[C any](env, def, usage string, dst func(*C) *[]string) Setting[C] {
	return Setting[C]{env: env, def: def, usage: usage,
		set: func(c *C, v string) error {
			*dst(c) = split(v)
			return nil
		},
		fill: func(c *C) {
			if p := dst(c); len(*p) == 0 {
				*p = split(def)
			}
		}}
}

func split(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// flagName is env without prefix, lower case, with dashes.
func flagName(env, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(env, prefix)), "_", "-")
}

// name is how an error names s: its variable and, unless EnvOnly, its flag.
func (s Setting[C]) name(prefix string) string {
	if s.envOnly {
		return s.env
	}
	return s.env + " (-" + flagName(s.env, prefix) + ")"
}

// text is a flag holding the text given, parsed by Load after all flags.
type text struct {
	v, def string
	set    bool
	isBool bool
}

func (t *text) String() string {
	if t == nil {
		return ""
	}
	return t.def
}

func (t *text) Set(v string) error { t.v, t.set = v, true; return nil }

func (t *text) IsBoolFlag() bool { return t.isBool }

// helpError is -h: its text is the usage.
type helpError struct{ usage string }

func (e helpError) Error() string { return e.usage }
func (e helpError) Unwrap() error { return flag.ErrHelp }

// Load returns the C the settings describe: each field from its flag when
// given, else from its environment variable when set (non-empty), else its
// default. prefix is the worker's variable prefix ("BRIDGE_"), stripped to
// name the flags; fs may hold flags of its own (persister rebuild's
// -since), which Load parses too. -version returns ErrVersion before any
// value is read; -h returns an error wrapping flag.ErrHelp whose text is
// the usage. A value that does not parse is an error naming the setting.
func Load[C any](fs *flag.FlagSet, prefix string, settings []Setting[C], args []string, getenv func(string) string) (C, error) {
	var c C
	fs.SetOutput(io.Discard)
	version := fs.Bool("version", false, "print the version and exit")
	vals := make([]*text, len(settings))
	for i, s := range settings {
		vals[i] = &text{def: s.def, isBool: s.isBool}
		if s.envOnly {
			continue
		}
		usage := s.usage + " (`" + s.env + "`)" // -h shows "-batch BRIDGE_BATCH"
		if s.isBool {
			usage = s.usage + " (" + s.env + ")"
		}
		fs.Var(vals[i], flagName(s.env, prefix), usage)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			var b bytes.Buffer
			fs.SetOutput(&b)
			fs.PrintDefaults()
			return c, helpError{fmt.Sprintf("Usage of %s:\n%s", fs.Name(), b.String())}
		}
		return c, err
	}
	if *version {
		return c, ErrVersion
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for i, s := range settings {
		v, given := vals[i].v, vals[i].set
		if !given {
			v = getenv(s.env)
			given = v != ""
		}
		if !given {
			s.fill(&c)
			continue
		}
		if err := s.set(&c, v); err != nil {
			return c, fmt.Errorf("%s = %q: %w", s.name(prefix), v, err)
		}
	}
	return c, nil
}

// Fill sets every zero field of c the settings name to its default: what a
// Config literal's zero values mean.
func Fill[C any](c *C, settings []Setting[C]) {
	for _, s := range settings {
		s.fill(c)
	}
}
