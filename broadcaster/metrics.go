package broadcaster

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the broadcaster, registered on Config.Registerer.
type metrics struct {
	connections        prometheus.Gauge
	connectionsTotal   *prometheus.CounterVec // by result
	subscriptions      prometheus.Gauge
	topics             prometheus.Gauge
	framesSent         prometheus.Counter
	framesShared       prometheus.Counter
	positionsSent      prometheus.Counter
	controlSent        prometheus.Counter
	positionsCoalesced prometheus.Counter
	fanoutCoalesced    prometheus.Counter
	positionsStale     prometheus.Counter
	messagesReceived   prometheus.Counter
	messagesInvalid    prometheus.Counter
	slowCloses         prometheus.Counter
	closes             *prometheus.CounterVec // by code
	requests           *prometheus.CounterVec // by type and result
	authLatency        *prometheus.HistogramVec
	resyncSnapshots    *prometheus.CounterVec // by result
	snapshotLatency    prometheus.Histogram
	snapshotPositions  prometheus.Histogram
	natsDropped        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns = "broadcaster"
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "connections",
			Help: "Open WebSocket connections."}),
		connectionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "connections_total",
			Help: "WebSocket handshakes by result: accepted, forbidden_origin, unauthorized, auth_unavailable, too_many_connections."}, []string{"result"}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "subscriptions",
			Help: "Live topic subscriptions over all connections."}),
		topics: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "topics",
			Help: "Topics with at least one subscriber, each one core NATS subscription."}),
		framesSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "frames_sent_total",
			Help: "WebSocket frames written to clients (positions and control)."}),
		framesShared: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "frames_shared_total",
			Help: "Positions frames that were one fan-out batch of a topic, built once and written to every client that had sent everything before it (included in frames_sent_total)."}),
		positionsSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "positions_sent_total",
			Help: "Positions written to clients in positions frames and snapshots."}),
		controlSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "control_frames_sent_total",
			Help: "Control frames (subscribed, unsubscribed, error) written to clients."}),
		positionsCoalesced: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "positions_coalesced_total",
			Help: "Pending positions replaced by a newer one of the same device before a slow client's writer was free."}),
		fanoutCoalesced: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "fanout_coalesced_total",
			Help: "Positions replaced by a newer one of the same device before fan-out, while a pass waited for its pacing (BROADCASTER_TOPIC_FRAME_RATE) or for the writers, or because fan-out fell behind; every client of the topic misses them."}),
		positionsStale: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "positions_stale_total",
			Help: "Positions not delivered to a client because it already had a newer or equal one of that device."}),
		messagesReceived: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "nats_messages_total",
			Help: "Position messages received from NATS (before fan-out)."}),
		messagesInvalid: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "nats_messages_invalid_total",
			Help: "NATS messages dropped because the payload or subject is not a valid position."}),
		slowCloses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "slow_client_closes_total",
			Help: "Clients closed with 1008 because their control queue overflowed."}),
		closes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "server_closes_total",
			Help: "Connections closed by the server, by close code."}, []string{"code"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
			Help: "Client messages by type and result (ok or an error code)."}, []string{"type", "result"}),
		authLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "auth_seconds",
			Help:    "Latency of authsvc requests, by endpoint (session, event).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 3}}, []string{"endpoint"}),
		resyncSnapshots: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "resync_snapshots_total",
			Help: "Topic snapshots read after a NATS reconnect, by result (ok, unavailable: retried)."}, []string{"result"}),
		snapshotLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "snapshot_seconds",
			Help:    "Latency of reading one topic snapshot from JetStream.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5}}),
		snapshotPositions: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "snapshot_positions",
			Help:    "Positions in one snapshot read from JetStream.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8)}),
		natsDropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "nats_slow_consumer_total",
			Help: "Slow-consumer errors of the broadcaster's NATS subscriptions (messages dropped by the client library)."}),
	}
	for _, c := range []prometheus.Collector{m.connections, m.connectionsTotal, m.subscriptions, m.topics, m.framesSent, m.framesShared,
		m.positionsSent, m.controlSent, m.positionsCoalesced, m.fanoutCoalesced, m.positionsStale, m.messagesReceived, m.messagesInvalid,
		m.slowCloses, m.closes, m.requests, m.authLatency, m.resyncSnapshots, m.snapshotLatency, m.snapshotPositions, m.natsDropped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
