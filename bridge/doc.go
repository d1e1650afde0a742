// Package bridge is being built; see the open issue.
package bridge
