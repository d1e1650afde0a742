package main

import (
	"errors"
	"flag"
	"strings"
	"testing"
)

// -h lists the flags without the servers scripts/bench sets; a run
// without them says to use scripts/bench.
func TestLoadConfigHelpWithoutServers(t *testing.T) {
	noEnv := func(string) string { return "" }
	if _, err := LoadConfig([]string{"-h"}, noEnv); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v, want flag.ErrHelp", err)
	}
	if _, err := LoadConfig(nil, noEnv); err == nil || !strings.Contains(err.Error(), "scripts/bench e2e") {
		t.Fatalf("no servers: %v, want a pointer to scripts/bench e2e", err)
	}
}
