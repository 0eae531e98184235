package allocator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the allocator's Prometheus metrics; docs/metrics.md lists
// them.
type metrics struct {
	registry    *prometheus.Registry
	writes      *prometheus.CounterVec // lease writes by result
	writeTime   prometheus.Histogram
	requests    *prometheus.CounterVec // bus requests served, by kind
	refused     *prometheus.CounterVec // bus requests refused, by kind
	moved       prometheus.Counter
	roundTime   prometheus.Histogram
	reclaimed   *prometheus.CounterVec // by pool and reason
	adds        *prometheus.CounterVec // by pool, node and result
	conflicts   prometheus.Counter
	epochMetric prometheus.Gauge
}

func newMetrics(a *Allocator) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_allocator_lease_writes_total", Help: "NodeLease writes, by cause (grant, miss, revoke, retry, node-lost, takeover) and result (ok; conflict: not at the version written, a lost answer or a takeover; error)."}, []string{"cause", "result"}),
		writeTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "warmpool_allocator_lease_write_duration_seconds", Help: "One NodeLease write to the Kubernetes API.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12)}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_allocator_bus_requests_total", Help: "Bus requests served, by kind (miss, report, sync)."}, []string{"kind"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_allocator_bus_refused_total", Help: "Bus requests refused because the node named in the body is not the node of the subject they were sent on, by kind (miss, report, sync): an agent speaking for another node."}, []string{"kind"}),
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warmpool_allocator_units_moved_total", Help: "Warm units revoked from one node and granted to another under scarcity."}),
		roundTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "warmpool_allocator_round_duration_seconds", Help: "One planning round: demand, plan, revokes and lease writes (pushes are not waited for).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14)}),
		reclaimed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_allocator_reclaimed_total", Help: "Units reclaimed, by pool and reason: node-lost (the units of a lost node, warm and assigned; leaked assignments of live nodes are their agents' to release, warmpool_agent_reclaimed_total)."},
			[]string{"pool", "reason"}),
		adds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_allocator_adds_total", Help: "ADDs reported by the agents, by pool, node and result: hit (served from the node's warm cache) or miss."},
			[]string{"pool", "node", "result"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "warmpool_allocator_conflicts_total", Help: "Stored leases listing a unit another node's lease lists, or one not in their pool: invariant violations, expected to stay 0."}),
		epochMetric: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "warmpool_allocator_epoch", Help: "The leader epoch this allocator serves with."}),
	}
	m.epochMetric.Set(float64(a.cfg.Epoch))
	m.registry.MustRegister(m.writes, m.writeTime, m.requests, m.refused, m.moved, m.roundTime, m.reclaimed, m.adds, m.conflicts, m.epochMetric, poolCollector{a},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

var poolUnitsDesc = prometheus.NewDesc("warmpool_allocator_pool_units", "Units of a pool by state: free, warm (on a node, unassigned) or assigned.",
	[]string{"pool", "state"}, nil)

// poolCollector reports the ledger's counts at scrape time.
type poolCollector struct{ a *Allocator }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- poolUnitsDesc }

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.a.mu.Lock()
	defer c.a.mu.Unlock()
	for name, ps := range c.a.ledger.pools {
		free, warm, assigned := c.a.countsLocked(ps)
		ch <- prometheus.MustNewConstMetric(poolUnitsDesc, prometheus.GaugeValue, float64(free), name, "free")
		ch <- prometheus.MustNewConstMetric(poolUnitsDesc, prometheus.GaugeValue, float64(warm), name, "warm")
		ch <- prometheus.MustNewConstMetric(poolUnitsDesc, prometheus.GaugeValue, float64(assigned), name, "assigned")
	}
}

// Registry returns the allocator's metrics registry, to serve on /metrics.
func (a *Allocator) Registry() *prometheus.Registry { return a.metrics.registry }
