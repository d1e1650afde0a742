// Package authsvc is being built; see the open issue.
package authsvc
