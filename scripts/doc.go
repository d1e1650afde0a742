// Package scripts holds the dev binary, the race simulator and the benchmark runner.
package scripts
