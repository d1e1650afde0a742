package bridge

import (
	"strings"
	"testing"
)

func TestMaskURLEveryServerOfAList(t *testing.T) {
	got := redact("nats://a:s3cret1@n1:4222,nats://b:s3cret2@n2:4222")
	if strings.Contains(got, "s3cret") {
		t.Fatalf("password left in %q", got)
	}
	if !strings.Contains(got, "n1:4222") || !strings.Contains(got, "n2:4222") {
		t.Fatalf("hosts lost in %q", got)
	}
}
