package authsvc

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one authsvc instance, registered on Config.Registerer.
type metrics struct {
	requests     *prometheus.CounterVec   // endpoint, outcome
	duration     *prometheus.HistogramVec // endpoint
	inflight     *prometheus.GaugeVec     // endpoint
	directus     *prometheus.HistogramVec // call, result
	directusUp   prometheus.Gauge
	db           *prometheus.HistogramVec // result
	dbUp         prometheus.Gauge
	cacheHits    *prometheus.CounterVec // cache
	cacheMisses  *prometheus.CounterVec // cache
	collapsed    *prometheus.CounterVec // cache
	cacheEntries *prometheus.GaugeVec   // cache
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	latency := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authsvc_requests_total", Help: "Requests answered, by endpoint (session, event) and outcome (ok, unauthorized, allowed, forbidden, not_found, bad_request, unavailable).",
		}, []string{"endpoint", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "authsvc_request_duration_seconds", Help: "Time from receiving a request to sending its answer.", Buckets: latency,
		}, []string{"endpoint"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "authsvc_requests_in_flight", Help: "Requests being handled, by endpoint.",
		}, []string{"endpoint"}),
		directus: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "authsvc_directus_request_duration_seconds", Help: "Directus HTTP calls, by call (users_me, policies_globals) and result (ok, unauthorized, error).", Buckets: latency,
		}, []string{"call", "result"}),
		directusUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "authsvc_directus_up", Help: "1 when the last Directus call got an HTTP answer below 500, else 0.",
		}),
		db: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "authsvc_db_query_duration_seconds", Help: "Membership queries, by result (ok, error).", Buckets: latency,
		}, []string{"result"}),
		dbUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "authsvc_db_up", Help: "1 when the last membership query succeeded, else 0.",
		}),
		cacheHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authsvc_cache_hits_total", Help: "Answers served from cache, by cache (session, event).",
		}, []string{"cache"}),
		cacheMisses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authsvc_cache_misses_total", Help: "Look-ups not in cache, by cache (session, event).",
		}, []string{"cache"}),
		collapsed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "authsvc_singleflight_collapsed_total", Help: "Look-ups that joined an identical one already in flight instead of calling Directus or the database, by cache.",
		}, []string{"cache"}),
		cacheEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "authsvc_cache_entries", Help: "Entries held, by cache (session: accepted sessions, refused: refused credentials, event).",
		}, []string{"cache"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.inflight, m.directus, m.directusUp, m.db, m.dbUp, m.cacheHits, m.cacheMisses, m.collapsed, m.cacheEntries} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Create the series a dashboard expects, so they read 0 rather than
	// missing.
	for _, c := range []string{"session", "event"} {
		m.cacheHits.WithLabelValues(c)
		m.cacheMisses.WithLabelValues(c)
		m.collapsed.WithLabelValues(c)
		m.cacheEntries.WithLabelValues(c)
		m.inflight.WithLabelValues(c)
	}
	m.cacheEntries.WithLabelValues("refused")
	for endpoint, outcomes := range outcomeNames {
		for _, o := range outcomes {
			m.requests.WithLabelValues(endpoint, o)
		}
	}
	m.directusUp.Set(1)
	m.dbUp.Set(1)
	return m, nil
}
