package persister

import (
	"github.com/prometheus/client_golang/prometheus"

	"trm-live/contract"
)

// metrics are the persister_* series, registered on Config.Registerer.
type metrics struct {
	rowsInserted  prometheus.Counter
	duplicates    prometheus.Counter
	batchSize     prometheus.Histogram
	commitSeconds prometheus.Histogram
	writeErrors   *prometheus.CounterVec
	naks          prometheus.Counter
	copyFallbacks prometheus.Counter
	writeRetries  *prometheus.CounterVec
	deadLetters   *prometheus.CounterVec
	repairs       *prometheus.CounterVec
	refills       prometheus.Counter
	refillRows    prometheus.Counter
	pending       prometheus.Gauge
	ackPending    prometheus.Gauge
	ready         prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		rowsInserted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "persister_rows_inserted_total", Help: "Positions inserted into positions (new rows only).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "persister_duplicates_skipped_total", Help: "Positions already in the table (re-deliveries, refills), skipped by ON CONFLICT DO NOTHING.",
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "persister_batch_size", Help: "Positions per written batch.",
			Buckets: []float64{1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000},
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "persister_commit_seconds", Help: "Time to write one batch: staging COPY, insert and commit.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "persister_write_errors_total", Help: "Failed batch writes by kind: schema (missing table/column), data (a row the database refuses), transient (connection, server).",
		}, []string{"kind"}),
		naks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "persister_naks_total", Help: "Messages handed back with a delay because they could not be written or dead-lettered.",
		}),
		copyFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "persister_copy_fallbacks_total", Help: "Write path auto: COPYs that met an already stored position and were written with ON CONFLICT instead.",
		}),
		writeRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "persister_write_retries_total", Help: "Batches written again at once after a deadlock (40P01) or serialization failure (40001), by SQLSTATE.",
		}, []string{"code"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "persister_dead_letters_total", Help: "Messages terminated and copied to POSITIONS_DLQ, by reason.",
		}, []string{"reason"}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "persister_schema_repairs_total", Help: "Schema drift repaired by re-applying migrations, by kind of missing object.",
		}, []string{"kind"}),
		refills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "persister_refills_total", Help: "Refills of positions from the stream started (after the table was re-created, or rebuild).",
		}),
		refillRows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "persister_refill_rows_total", Help: "Rows inserted by refills.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "persister_consumer_pending", Help: "Messages in POSITIONS not yet delivered to the persister consumer.",
		}),
		ackPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "persister_consumer_ack_pending", Help: "Messages delivered to the persister consumer and not yet acknowledged.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "persister_ready", Help: "1 when the database, schema and consumer are all usable.",
		}),
	}
	for _, c := range []prometheus.Collector{m.rowsInserted, m.duplicates, m.batchSize, m.commitSeconds, m.writeErrors,
		m.naks, m.copyFallbacks, m.writeRetries, m.deadLetters, m.repairs, m.refills, m.refillRows, m.pending, m.ackPending, m.ready} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, k := range []string{"schema", "data", "transient"} {
		m.writeErrors.WithLabelValues(k)
	}
	for _, c := range []string{"40P01", "40001"} {
		m.writeRetries.WithLabelValues(c)
	}
	for _, r := range []contract.Reason{contract.ReasonUndecodable, contract.ReasonUnstorable} {
		m.deadLetters.WithLabelValues(string(r))
	}
	return m, nil
}
