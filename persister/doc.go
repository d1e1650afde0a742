// Package persister is being built; see the open issue.
package persister
