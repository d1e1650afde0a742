// Package auth is the wire contract of the authsvc NATS micro service: its
// subjects, request and response types, error codes, and the Client the
// broadcaster uses. Nothing here logs or returns a credential.
//
// Wire format (compact JSON, golden files in testdata/):
//
//	authsvc.session  request  {"cookie":"<session cookie value>"} or {"bearer":"<token>"}
//	                 reply    {"user_id":"<uuid>","role":"<uuid>","admin":false}
//	authsvc.event    request  {"user_id":"<uuid>","admin":false,"event_id":"<uuid>"}
//	                 reply    {"decision":"allowed"|"forbidden"|"not_found"}
//
// A failure is a micro error reply: headers Nats-Service-Error-Code (one of
// the Code constants) and Nats-Service-Error (a description that never holds
// the credential), with an empty body.
package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Service identity and endpoint subjects.
const (
	ServiceName    = "authsvc"
	ServiceVersion = "1.0.0"
	// QueueGroup is shared by every authsvc instance, so a request reaches one.
	QueueGroup = "authsvc"
	// SessionSubject resolves a credential to a user.
	SessionSubject = "authsvc.session"
	// EventSubject authorizes a user for an event.
	EventSubject = "authsvc.event"
)

// DefaultCookieName is the name of Directus's session cookie
// (SESSION_COOKIE_NAME) unless configured otherwise.
const DefaultCookieName = "directus_session_token"

// MaxRequestBytes bounds a request payload; larger ones get CodeBadRequest.
const MaxRequestBytes = 8 << 10

// Error codes carried in the micro Nats-Service-Error-Code header.
const (
	CodeBadRequest   = "400"
	CodeUnauthorized = "401"
	CodeUnavailable  = "503"
	CodeInternal     = "500"
)

// SessionRequest carries exactly one credential: the value of the Directus
// session cookie, or a bearer access token. Never the whole cookie jar.
type SessionRequest struct {
	Cookie string `json:"cookie,omitempty"`
	Bearer string `json:"bearer,omitempty"`
}

// User is what a valid credential resolves to.
type User struct {
	ID    string `json:"user_id"`
	Role  string `json:"role,omitempty"`
	Admin bool   `json:"admin"`
}

// EventRequest asks whether a user may follow an event. Admin is the flag
// the session endpoint returned for the user.
type EventRequest struct {
	UserID  string `json:"user_id"`
	Admin   bool   `json:"admin"`
	EventID string `json:"event_id"`
}

// Decision is the answer of the event endpoint.
type Decision string

// Decisions.
const (
	Allowed   Decision = "allowed"
	Forbidden Decision = "forbidden"
	NotFound  Decision = "not_found"
)

// EventResponse is the reply of the event endpoint.
type EventResponse struct {
	Decision Decision `json:"decision"`
}

// Errors returned by the Client. Callers branch on them with errors.Is.
var (
	// ErrUnauthorized: the credential is missing, invalid, expired or revoked.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrUnavailable: authsvc or Directus or the database could not answer
	// (timeout, no responders, 5xx). Never a verdict on the credential.
	ErrUnavailable = errors.New("auth unavailable")
	// ErrBadRequest: the request was malformed (for example a bad event id).
	ErrBadRequest = errors.New("bad auth request")
)

// Client calls authsvc over NATS request/reply.
type Client struct {
	nc      *nats.Conn
	timeout time.Duration
}

// DefaultTimeout bounds one request when the context has no earlier deadline.
const DefaultTimeout = 3 * time.Second

// NewClient returns a client on nc. timeout 0 means DefaultTimeout.
func NewClient(nc *nats.Conn, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{nc: nc, timeout: timeout}
}

// Session resolves a credential. It returns ErrUnauthorized,
// ErrUnavailable or ErrBadRequest (wrapped) on failure.
func (c *Client) Session(ctx context.Context, req SessionRequest) (User, error) {
	if req.Cookie == "" && req.Bearer == "" {
		return User{}, fmt.Errorf("%w: no credential", ErrUnauthorized)
	}
	var u User
	if err := c.call(ctx, SessionSubject, req, &u); err != nil {
		return User{}, err
	}
	return u, nil
}

// Authorize asks whether user may follow eventID.
func (c *Client) Authorize(ctx context.Context, user User, eventID string) (Decision, error) {
	var r EventResponse
	if err := c.call(ctx, EventSubject, EventRequest{UserID: user.ID, Admin: user.Admin, EventID: eventID}, &r); err != nil {
		return "", err
	}
	switch r.Decision {
	case Allowed, Forbidden, NotFound:
		return r.Decision, nil
	}
	return "", fmt.Errorf("%w: unknown decision %q", ErrUnavailable, r.Decision)
}

func (c *Client) call(ctx context.Context, subject string, req, resp any) error {
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%w: encode: %v", ErrBadRequest, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	msg, err := c.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		// Timeouts, no responders, a closed connection: authsvc could not
		// answer, which says nothing about the credential.
		return fmt.Errorf("%w: %s: %v", ErrUnavailable, subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		desc := msg.Header.Get(micro.ErrorHeader)
		switch code {
		case CodeUnauthorized:
			return fmt.Errorf("%w: %s", ErrUnauthorized, desc)
		case CodeBadRequest:
			return fmt.Errorf("%w: %s", ErrBadRequest, desc)
		default:
			return fmt.Errorf("%w: %s %s", ErrUnavailable, code, desc)
		}
	}
	if err := json.Unmarshal(msg.Data, resp); err != nil {
		return fmt.Errorf("%w: decode %s reply: %v", ErrUnavailable, subject, err)
	}
	return nil
}
