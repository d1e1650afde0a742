package authsvc

import (
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract/auth"
)

// FuzzSessionRequest: whatever the payload, the session endpoint never
// panics, and it only starts a Directus look-up for a request that carries
// exactly one credential that auth.ValidToken and Plausible accept. Every other request
// gets 400 or 401 at once.
func FuzzSessionRequest(f *testing.F) {
	for _, seed := range []string{
		`{"cookie":"eyJhbGciOiJIUzI1NiJ9.e30.sig"}`, `{"bearer":"static-token"}`, `{}`, ``, `null`, `[]`,
		`{"cookie":"a; b=c"}`, `{"cookie":"x","bearer":"y"}`, `{"cookie":"\r\n"}`, `{"cookie":1}`,
		`{"cookie":"` + strings.Repeat("a", auth.MaxRequestBytes) + `"}`,
	} {
		f.Add([]byte(seed))
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	cfg := Config{DirectusURL: "http://d", DatabaseURL: "postgres://x"}.withDefaults()
	s := &service{cfg: cfg, m: m, sessions: newCache[[sha256.Size]byte, sessionEntry](16), refused: newCache[[sha256.Size]byte, sessionEntry](16)}
	for i, c := range []string{"session", "event"} {
		s.hits[i] = m.cacheHits.WithLabelValues(c)
		s.misses[i] = m.cacheMisses.WithLabelValues(c)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st := s.session(data)
		if st.lookup == nil {
			if st.reply.code != auth.CodeBadRequest && st.reply.code != auth.CodeUnauthorized {
				t.Fatalf("immediate answer %+v for %q", st.reply, data)
			}
			return
		}
		var req auth.SessionRequest
		if decode(data, &req) != nil || (req.Cookie != "") == (req.Bearer != "") || !auth.ValidToken(req.Cookie+req.Bearer) || !req.Plausible() {
			t.Fatalf("look-up started for %q", data)
		}
	})
}
