// Package broadcaster is being built; see the open issue.
package broadcaster
