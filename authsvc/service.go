package authsvc

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
	"trm-live/contract/auth"
)

// sessionEntry is a cached session verdict: a user (its encoded reply), or
// a rejection.
type sessionEntry struct {
	data []byte
	ok   bool
}

type eventKey struct {
	user, event string
	admin       bool
}

// service answers the two endpoints. The caches and singleflight groups are
// safe for concurrent use; handler goroutines are bounded by the slots of
// each endpoint and tracked by wg so shutdown can wait for them.
type service struct {
	cfg      Config
	log      *slog.Logger
	m        *metrics
	nc       *nats.Conn
	directus *directusClient
	members  *membership
	sessions *cache[[sha256.Size]byte, sessionEntry] // accepted only
	refused  *cache[[sha256.Size]byte, sessionEntry] // refusals, smaller: cannot evict sessions
	events   *cache[eventKey, auth.Decision]
	sfSess   flight[sessionEntry]
	sfEvent  flight[auth.Decision]
	// Metric children by cache: [0] session, [1] event.
	hits, misses, collapsed [2]prometheus.Counter
	wg                      sync.WaitGroup
	// base is cancelled only after the handlers have finished, so look-ups
	// in flight at shutdown complete.
	base context.Context
}

// reply is what a handler answers: data, or an error code and description.
type reply struct {
	data    []byte
	code    string
	desc    string
	outcome string
}

func errorReply(code, outcome, format string, args ...any) reply {
	return reply{code: code, desc: fmt.Sprintf(format, args...), outcome: outcome}
}

// outcomeNames lists the outcomes of each endpoint (metric label values).
var outcomeNames = map[string][]string{
	"session": {"ok", "unauthorized", "bad_request", "unavailable"},
	"event":   {"allowed", "forbidden", "not_found", "bad_request", "unavailable"},
}

// register adds the micro service and its two endpoints.
func (s *service) register() (micro.Service, error) {
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        auth.ServiceName,
		Version:     auth.ServiceVersion,
		Description: "Directus session validation and event authorization",
		QueueGroup:  auth.QueueGroup,
	})
	if err != nil {
		return nil, fmt.Errorf("add micro service: %w", err)
	}
	if err := svc.AddEndpoint("session", s.handler("session", s.session), micro.WithEndpointSubject(auth.SessionSubject)); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("add session endpoint: %w", err)
	}
	if err := svc.AddEndpoint("event", s.handler("event", s.event), micro.WithEndpointSubject(auth.EventSubject)); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("add event endpoint: %w", err)
	}
	return svc, nil
}

// stage is what a handler decides without waiting: a final reply (bad
// request, cache hit), or a look-up to run on a goroutine.
type stage struct {
	reply  reply
	lookup func() reply
}

func done(r reply) stage { return stage{reply: r} }

// handler answers cheap requests inline and runs look-ups on their own
// goroutines, at most Concurrency at once per endpoint: micro calls a
// handler serially per endpoint, and a look-up takes milliseconds. When
// every slot is busy, the handler blocks and requests wait in the
// subscription's buffer.
//
// Replies are published on the connection directly rather than with
// req.Respond: micro reads the request's error state right after the
// handler returns, which would race with the goroutine.
func (s *service) handler(endpoint string, fn func(data []byte) stage) micro.HandlerFunc {
	slots := make(chan struct{}, s.cfg.Concurrency)
	inflight := s.m.inflight.WithLabelValues(endpoint)
	duration := s.m.duration.WithLabelValues(endpoint)
	outcomes := map[string]prometheus.Counter{}
	for _, o := range outcomeNames[endpoint] {
		outcomes[o] = s.m.requests.WithLabelValues(endpoint, o)
	}
	send := func(req micro.Request, start time.Time, r reply) {
		// Counted before the reply leaves, so a caller that got its answer
		// also sees it in the metrics.
		if c, ok := outcomes[r.outcome]; ok {
			c.Inc()
		} else {
			s.m.requests.WithLabelValues(endpoint, r.outcome).Inc()
		}
		duration.Observe(time.Since(start).Seconds())
		msg := &nats.Msg{Subject: req.Reply(), Data: r.data}
		if r.code != "" {
			msg.Header = nats.Header{micro.ErrorCodeHeader: {r.code}, micro.ErrorHeader: {r.desc}}
		}
		if msg.Subject != "" {
			if err := s.nc.PublishMsg(msg); err != nil {
				s.log.Debug("reply not sent", "endpoint", endpoint, "err", err)
			}
		}
	}
	return func(req micro.Request) {
		start := time.Now()
		st := fn(req.Data())
		if st.lookup == nil {
			send(req, start, st.reply)
			return
		}
		slots <- struct{}{}
		s.wg.Add(1)
		inflight.Inc()
		go func() {
			defer func() {
				inflight.Dec()
				<-slots
				s.wg.Done()
			}()
			send(req, start, st.lookup())
		}()
	}
}

// decode reads a request payload, refusing oversized or malformed ones.
func decode(data []byte, v any) error {
	if len(data) > auth.MaxRequestBytes {
		return fmt.Errorf("request of %d bytes exceeds %d", len(data), auth.MaxRequestBytes)
	}
	if len(data) == 0 {
		return errors.New("empty request: want a JSON object")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("malformed JSON request: %v", err)
	}
	return nil
}

func (s *service) session(data []byte) stage {
	var req auth.SessionRequest
	if err := decode(data, &req); err != nil {
		return done(errorReply(auth.CodeBadRequest, "bad_request", "%v", err))
	}
	switch {
	case req.Cookie != "" && req.Bearer != "":
		return done(errorReply(auth.CodeBadRequest, "bad_request", "send one credential: cookie or bearer, not both"))
	case req.Empty():
		return done(errorReply(auth.CodeUnauthorized, "unauthorized", "no credential"))
	}
	cred := req
	if !auth.ValidToken(cred.Token()) || !req.Plausible() {
		// Cannot be a Directus token; refused without asking Directus.
		return done(errorReply(auth.CodeUnauthorized, "unauthorized", "malformed credential"))
	}

	key := credentialKey(cred)
	if e, ok := s.cachedSession(key); ok {
		s.hits[0].Inc()
		return done(sessionReply(e))
	}
	s.misses[0].Inc()
	return stage{lookup: func() reply { return s.resolveSession(key, cred) }}
}

// resolveSession asks Directus, once for all identical concurrent requests.
func (s *service) resolveSession(key [sha256.Size]byte, cred auth.SessionRequest) reply {
	e, err := s.sfSess.do(string(key[:]), s.collapsed[0].Inc, func() (sessionEntry, error) {
		// A look-up that finished just before this one started has
		// already filled the cache.
		if e, ok := s.cachedSession(key); ok {
			return e, nil
		}
		u, err := s.directus.resolve(s.base, cred)
		switch {
		case err == nil:
			data, err := json.Marshal(u)
			if err != nil {
				return sessionEntry{}, err
			}
			e := sessionEntry{data: data, ok: true}
			s.sessions.put(key, e, s.cfg.Now().Add(s.cfg.SessionTTL))
			s.m.cacheEntries.WithLabelValues("session").Set(float64(s.sessions.len()))
			s.log.Debug("session resolved", "user_id", u.ID, "admin", u.Admin)
			return e, nil
		case errors.Is(err, errUnauthorized):
			e := sessionEntry{}
			s.refused.put(key, e, s.cfg.Now().Add(s.cfg.FailureTTL))
			s.m.cacheEntries.WithLabelValues("refused").Set(float64(s.refused.len()))
			return e, nil
		default:
			return sessionEntry{}, err // unavailable: never cached
		}
	})
	if err != nil {
		return errorReply(auth.CodeUnavailable, "unavailable", "%v", err)
	}
	return sessionReply(e)
}

// cachedSession looks a credential up among the accepted sessions, then
// among the refusals.
func (s *service) cachedSession(key [sha256.Size]byte) (sessionEntry, bool) {
	now := s.cfg.Now()
	if e, ok := s.sessions.get(key, now); ok {
		return e, true
	}
	return s.refused.get(key, now)
}

func sessionReply(e sessionEntry) reply {
	if !e.ok {
		return errorReply(auth.CodeUnauthorized, "unauthorized", "directus refused the credential")
	}
	return reply{data: e.data, outcome: "ok"}
}

// credentialKey is the SHA-256 of the credential and its kind: the cache
// never holds a credential itself.
func credentialKey(c auth.SessionRequest) [sha256.Size]byte {
	h := sha256.New()
	if c.Bearer != "" {
		h.Write([]byte("bearer\x00"))
	} else {
		h.Write([]byte("cookie\x00"))
	}
	h.Write([]byte(c.Token()))
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (s *service) event(data []byte) stage {
	var req auth.EventRequest
	if err := decode(data, &req); err != nil {
		return done(errorReply(auth.CodeBadRequest, "bad_request", "%v", err))
	}
	if !contract.ValidUUID(req.EventID) {
		return done(errorReply(auth.CodeBadRequest, "bad_request", "event_id %q is not a canonical lowercase uuid", truncate(req.EventID)))
	}
	if !contract.ValidUUID(req.UserID) {
		return done(errorReply(auth.CodeBadRequest, "bad_request", "user_id %q is not a canonical lowercase uuid", truncate(req.UserID)))
	}
	key := eventKey{user: req.UserID, event: req.EventID, admin: req.Admin}
	if d, ok := s.events.get(key, s.cfg.Now()); ok {
		s.hits[1].Inc()
		return done(decisionReply(d))
	}
	s.misses[1].Inc()
	return stage{lookup: func() reply { return s.decideEvent(key) }}
}

// decideEvent queries the database, once for all identical concurrent
// requests.
func (s *service) decideEvent(key eventKey) reply {
	d, err := s.sfEvent.do(key.user+"/"+key.event+"/"+strconv.FormatBool(key.admin), s.collapsed[1].Inc, func() (auth.Decision, error) {
		if d, ok := s.events.get(key, s.cfg.Now()); ok {
			return d, nil
		}
		d, err := s.members.decide(s.base, key.user, key.admin, key.event)
		if err != nil {
			return "", err // unavailable: never cached
		}
		ttl := s.cfg.EventTTL
		if d != auth.Allowed {
			ttl = s.cfg.EventDenyTTL
		}
		s.events.put(key, d, s.cfg.Now().Add(ttl))
		s.m.cacheEntries.WithLabelValues("event").Set(float64(s.events.len()))
		s.log.Debug("event decided", "user_id", key.user, "event_id", key.event, "decision", d)
		return d, nil
	})
	if err != nil {
		return errorReply(auth.CodeUnavailable, "unavailable", "%v", err)
	}
	return decisionReply(d)
}

// decisionReplies are the encoded event answers, made once.
var decisionReplies = func() map[auth.Decision][]byte {
	m := map[auth.Decision][]byte{}
	for _, d := range []auth.Decision{auth.Allowed, auth.Forbidden, auth.NotFound} {
		m[d], _ = json.Marshal(auth.EventResponse{Decision: d})
	}
	return m
}()

func decisionReply(d auth.Decision) reply {
	return reply{data: decisionReplies[d], outcome: string(d)}
}

// truncate keeps error descriptions short whatever the client sent.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
