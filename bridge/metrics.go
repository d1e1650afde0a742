package bridge

import (
	"github.com/prometheus/client_golang/prometheus"
	"sync/atomic"

	"trm-live/contract"
)

// metrics are the bridge's Prometheus series, registered on the configured
// Registerer (no globals, so several bridges can live in one process).
type metrics struct {
	read           prometheus.Counter
	published      prometheus.Counter
	duplicates     prometheus.Counter
	unassigned     prometheus.Counter
	deadLettered   *prometheus.CounterVec
	dlqDropped     prometheus.Counter
	streamFull     *prometheus.GaugeVec
	acked          prometheus.Counter
	latency        prometheus.Histogram
	retries        prometheus.Counter
	inFlight       prometheus.GaugeFunc
	claimed        prometheus.Counter
	deletedPending prometheus.Counter
	lag            *prometheus.GaugeVec
	pending        *prometheus.GaugeVec
	redisErrors    prometheus.Counter
	routingRows    prometheus.Gauge
	routingErrors  prometheus.Counter
	routingLoaded  prometheus.Gauge

	lossChecks       prometheus.Counter
	lossDetected     prometheus.Counter
	republished      prometheus.Counter
	republishStored  prometheus.Counter
	consumersDeleted prometheus.Counter

	fastBatches  prometheus.Counter
	fastFailed   prometheus.Counter
	fastFallback prometheus.Counter
}

// newMetrics registers the bridge's metrics; inFlight is read for
// bridge_in_flight.
func newMetrics(reg prometheus.Registerer, inFlight *atomic.Int64) (*metrics, error) {
	m := &metrics{
		read: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_entries_read_total", Help: "Redis entries taken for processing (read, re-read or claimed)."}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_positions_published_total", Help: "Positions acknowledged by JetStream (duplicates included)."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_publish_duplicates_total", Help: "Publishes JetStream recognised as duplicates of a stored Nats-Msg-Id."}),
		unassigned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_positions_unassigned_total", Help: "Positions no event_devices window covered."}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bridge_dead_letters_total", Help: "Entries dead-lettered to dlq.positions, by reason."}, []string{"reason"}),
		dlqDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_dead_letters_dropped_total", Help: "Entries acknowledged without a dead letter: NATS refused the dead letter for good (e.g. its headers alone exceed the max payload)."}),
		streamFull: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_jetstream_stream_full", Help: "1 while the stream refuses publishes for a full store (MaxBytes with DiscardNew, or the server's store); its entries stay pending in Redis."}, []string{"stream"}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_entries_acked_total", Help: "Entries acknowledged in Redis (XACK)."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "bridge_publish_latency_seconds", Help: "From first publish to JetStream ack, retries included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_publish_retries_total", Help: "Publishes re-sent after a failure or timeout (same Nats-Msg-Id)."}),
		inFlight: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bridge_in_flight", Help: "Entries published and not yet handed to the acker: awaiting their JetStream ack or a re-send."},
			func() float64 { return float64(inFlight.Load()) }),
		claimed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_entries_claimed_total", Help: "Pending entries claimed from idle consumers (XAUTOCLAIM)."}),
		deletedPending: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_deleted_pending_total", Help: "Pending entries deleted from the stream before processing; acknowledged and skipped."}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_group_lag", Help: "Entries of the stream not yet delivered to the group (XINFO GROUPS lag; -1 unknown)."}, []string{"stream"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bridge_group_pending", Help: "Entries delivered to the group and not yet acknowledged."}, []string{"stream"}),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_redis_errors_total", Help: "Failed Redis calls (each is retried with backoff)."}),
		routingRows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_routing_assignments", Help: "event_devices rows in the routing table."}),
		routingErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_routing_refresh_errors_total", Help: "Failed reloads of event_devices (the last table stays in use)."}),
		routingLoaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bridge_routing_loaded_timestamp_seconds", Help: "When event_devices was last loaded (Unix time)."}),
		lossChecks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_jetstream_loss_checks_total", Help: "Completed checks that JetStream still holds the newest acknowledged messages."}),
		lossDetected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_jetstream_loss_detected_total", Help: "Times JetStream was found without messages it had acknowledged (each triggers a re-publish of the window)."}),
		republished: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_republished_total", Help: "Entries of the re-publish window acknowledged by JetStream again (duplicates included)."}),
		republishStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_republish_restored_total", Help: "Re-published entries JetStream stored anew (it had lost them, or their dedup entry had expired)."}),
		consumersDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_consumers_deleted_total", Help: "Idle consumers with no pending entries deleted from the group."}),
		fastBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_fast_batches_total", Help: "Fast-ingest batches JetStream committed (BRIDGE_PUBLISH_MODE=batch)."}),
		fastFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_fast_batch_failures_total", Help: "Fast-ingest batches that failed; their positions were re-published asynchronously with the same Nats-Msg-Id."}),
		fastFallback: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bridge_fast_batch_fallbacks_total", Help: "Times batch mode fell back to async publishing because JetStream does not take fast batches (server below 2.14 or stream without allow_batched)."}),
	}
	for _, c := range []prometheus.Collector{m.fastBatches, m.fastFailed, m.fastFallback, m.lossChecks, m.lossDetected, m.republished, m.republishStored, m.consumersDeleted, m.read, m.published, m.duplicates, m.unassigned, m.deadLettered, m.dlqDropped, m.streamFull,
		m.acked, m.latency, m.retries, m.inFlight, m.claimed, m.deletedPending, m.lag, m.pending,
		m.redisErrors, m.routingRows, m.routingErrors, m.routingLoaded} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range contract.Reasons {
		m.deadLettered.WithLabelValues(string(r))
	}
	m.deadLettered.WithLabelValues(string(contract.ReasonUnpublishable))
	return m, nil
}
