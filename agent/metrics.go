package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/warmpool/warmpool/agent/store"
)

// metrics are the agent's Prometheus metrics; docs/metrics.md lists them.
type metrics struct {
	registry     *prometheus.Registry
	add          *prometheus.HistogramVec // by result: hit, miss, error
	del          prometheus.Histogram
	persist      *prometheus.HistogramVec // by op: assign, release
	hits         *prometheus.CounterVec   // by pool
	misses       *prometheus.CounterVec   // by pool
	bus          *prometheus.CounterVec   // by subject kind and direction
	reclaimed    *prometheus.CounterVec   // by pool
	voided       *prometheus.CounterVec   // by pool
	coalesced    *prometheus.CounterVec   // by pool
	coolingWaits *prometheus.CounterVec   // by pool
}

// Latency buckets from 100 µs (a warm hit's commit) to 10 s (a miss that
// waits out its timeout).
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2.5, 12)

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		add: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "warmpool_agent_add_duration_seconds", Help: "CNI ADD served by the agent, from request to answer, by result (hit, miss, error).",
			Buckets: latencyBuckets}, []string{"result"}),
		del: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "warmpool_agent_del_duration_seconds", Help: "CNI DEL served by the agent, from request to answer.", Buckets: latencyBuckets}),
		persist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "warmpool_agent_persist_duration_seconds", Help: "bbolt commit of an assignment or a release (fsync included).",
			Buckets: latencyBuckets}, []string{"op"}),
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_agent_cache_hits_total", Help: "ADDs answered from the node's warm cache."}, []string{"pool"}),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_agent_cache_misses_total", Help: "ADDs that found the node's cache empty and were given an address the allocator granted."}, []string{"pool"}),
		reclaimed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_agent_reclaimed_total", Help: "Assignments the leak GC released because their pod was gone (a DEL never came)."}, []string{"pool"}),
		voided: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_agent_voided_total", Help: "Assignments voided because the node's lease no longer lists their unit: the node was declared lost and its pods deleted while its agent was cut off. Any is worth a look."}, []string{"pool"}),
		coolingWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_agent_cooling_waits_total", Help: "ADDs that found no warm unit and were served a unit of this node once its reuse delay after a DEL was over (counted as hits too)."}, []string{"pool"}),
		coalesced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_agent_miss_shared_total", Help: "ADDs whose cache miss was served by a request to the allocator shared with other ADDs of the same pool."}, []string{"pool"}),
		bus: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "warmpool_agent_bus_messages_total", Help: "Bus messages sent and received by the agent, by kind and direction."}, []string{"kind", "direction"}),
	}
	m.registry.MustRegister(m.add, m.del, m.persist, m.hits, m.misses, m.bus, m.reclaimed, m.voided, m.coalesced, m.coolingWaits, stateCollector{a},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

var unitsDesc = prometheus.NewDesc("warmpool_agent_units", "Units the node holds, by pool and state (warm, assigned, cooling).",
	[]string{"pool", "state"}, nil)

// stateCollector reports the cache's contents at scrape time, so the
// figures are never stale and no gauge is updated on the ADD path.
type stateCollector struct{ a *Agent }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- unitsDesc }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct {
		pool  string
		state store.State
	}
	counts := map[key]int{}
	c.a.mu.Lock()
	for _, u := range c.a.units {
		counts[key{u.Pool, u.State}]++
	}
	for pool := range c.a.pools {
		for _, st := range []store.State{store.Warm, store.Assigned, store.Cooling} {
			counts[key{pool, st}] += 0
		}
	}
	c.a.mu.Unlock()
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(unitsDesc, prometheus.GaugeValue, float64(n), k.pool, string(k.state))
	}
}

// Registry returns the agent's metrics registry, to serve on /metrics.
func (a *Agent) Registry() *prometheus.Registry { return a.metrics.registry }
