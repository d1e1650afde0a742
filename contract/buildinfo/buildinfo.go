// Package buildinfo is the build-info metric every worker exports, the
// part of the contract the operator kit reads: deploy/prometheus and
// deploy/grafana select trm_build_info{version,revision} and the Go and
// process collectors by these names for all four workers alike.
package buildinfo

import (
	"errors"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Register registers trm_build_info{version,revision} (always 1) and the Go
// and process collectors on reg. An empty version is "dev"; an empty
// revision is the toolchain's vcs.revision, else "unknown". A collector reg
// already holds (workers sharing one registry, as in the dev binary) is
// kept.
func Register(reg prometheus.Registerer, version, revision string) error {
	if version == "" {
		version = "dev"
	}
	if revision == "" {
		revision = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && s.Value != "" {
					revision = s.Value
				}
			}
		}
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "trm_build_info",
		Help:        "Always 1: the labels name the release and VCS revision this worker was built from.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision}})
	info.Set(1)
	for _, c := range []prometheus.Collector{info, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil && !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
			return err
		}
	}
	return nil
}
