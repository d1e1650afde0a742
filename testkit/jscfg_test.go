package testkit

import "github.com/nats-io/nats.go/jetstream"

func jsCfg() jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}
}
