// Package buildinfo is the build-info metric every worker exports, the
// part of the contract the operator kit reads: deploy/prometheus and
// deploy/grafana select trm_build_info{version,revision} and the Go and
// process collectors by these names for all four workers alike.
package buildinfo

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Register registers trm_build_info{version,revision} (always 1), labelled
// as Stamp reads the stamp, and the Go and process collectors on reg. A
// collector reg already holds (workers sharing one registry, as in the dev
// binary) is kept.
func Register(reg prometheus.Registerer, version, revision string) error {
	version, revision = Stamp(version, revision)
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

// Stamp is the release and revision of a build stamped with version and
// revision (main.version, main.revision): an empty version is "dev"; an
// empty revision is the toolchain's vcs.revision, else "unknown".
func Stamp(version, revision string) (string, string) {
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
	return version, revision
}

// Line is what -version prints: "bridge 1.2.3 (revision abc)", with the
// labels trm_build_info carries.
func Line(name, version, revision string) string {
	version, revision = Stamp(version, revision)
	return fmt.Sprintf("%s %s (revision %s)", name, version, revision)
}
