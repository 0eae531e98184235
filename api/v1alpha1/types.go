package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// IPPool is a cluster-scoped pool of underlay addresses. A pod whose
// namespace, labels and node match the pool's selectors gets one address of
// each family the pool has: a dual-stack pool hands out an IPv4/IPv6 pair.
//
// The address sets (ipv4, ipv6) are immutable in v1alpha1: to grow a
// subnet, add a second pool with the same selectors. The allocator never
// hands out the network address, the IPv4 broadcast address, the gateway, or
// an excluded address.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=ipp,categories=warmpool
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="IPv4",type=string,JSONPath=`.spec.ipv4.cidr`
// +kubebuilder:printcolumn:name="IPv6",type=string,JSONPath=`.spec.ipv6.cidr`
// +kubebuilder:printcolumn:name="Total",type=integer,JSONPath=`.status.total`
// +kubebuilder:printcolumn:name="Free",type=integer,JSONPath=`.status.free`
// +kubebuilder:printcolumn:name="Warm",type=integer,JSONPath=`.status.warm`
// +kubebuilder:printcolumn:name="Assigned",type=integer,JSONPath=`.status.assigned`
// +kubebuilder:printcolumn:name="Pending",type=integer,JSONPath=`.status.pending`
// +kubebuilder:printcolumn:name="Hits",type=integer,JSONPath=`.status.hits`,priority=1
// +kubebuilder:printcolumn:name="Misses",type=integer,JSONPath=`.status.misses`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type IPPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec IPPoolSpec `json:"spec"`
	// +optional
	Status IPPoolStatus `json:"status,omitempty"`
}

// IPPoolSpec describes the addresses of a pool, which pods may use them, and
// how many the allocator keeps warm on each node.
//
// +kubebuilder:validation:XValidation:rule="has(self.ipv4) || has(self.ipv6)",message="a pool needs ipv4, ipv6 or both"
// +kubebuilder:validation:XValidation:rule="!has(self.ipv4) || !isCIDR(self.ipv4.cidr) || cidr(self.ipv4.cidr).ip().family() == 4",message="ipv4.cidr must be an IPv4 CIDR",fieldPath=".ipv4.cidr"
// +kubebuilder:validation:XValidation:rule="!has(self.ipv6) || !isCIDR(self.ipv6.cidr) || cidr(self.ipv6.cidr).ip().family() == 6",message="ipv6.cidr must be an IPv6 CIDR",fieldPath=".ipv6.cidr"
// +kubebuilder:validation:XValidation:rule="has(self.ipv4) == has(oldSelf.ipv4) && has(self.ipv6) == has(oldSelf.ipv6)",message="the address families of a pool are immutable: create a new pool"
type IPPoolSpec struct {
	// IPv4 is the pool's IPv4 subnet. Its addresses (cidr, ranges, exclude,
	// gateway) are immutable; its routes are not.
	// +optional
	IPv4 *Subnet `json:"ipv4,omitempty"`
	// IPv6 is the pool's IPv6 subnet, immutable as IPv4 is.
	// +optional
	IPv6 *Subnet `json:"ipv6,omitempty"`

	// VLAN is the 802.1Q id of the underlay segment the subnets live on. warmpool
	// does not create VLAN interfaces: the id tells operators and the main
	// plugin's configuration which segment the pool belongs to.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4094
	VLAN *int32 `json:"vlan,omitempty"`

	// NamespaceSelector selects the namespaces whose pods may use the pool.
	// Unset selects every namespace.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// PodSelector selects, by label, the pods that may use the pool. Unset
	// selects every pod.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
	// NodeSelector selects, by label, the nodes on which the pool's addresses
	// are routable; only those nodes are warmed. Unset selects every node.
	// +optional
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	// Warm sets how many of the pool's addresses the allocator keeps cached on
	// each eligible node.
	// +optional
	// +kubebuilder:default={minWarm:2,warmTarget:4,maxWarm:64}
	Warm *Warm `json:"warm,omitempty"`
}

// Subnet is one address family of a pool.
//
// +kubebuilder:validation:XValidation:rule="self.cidr == oldSelf.cidr && has(self.ranges) == has(oldSelf.ranges) && (!has(self.ranges) || self.ranges == oldSelf.ranges) && has(self.exclude) == has(oldSelf.exclude) && (!has(self.exclude) || self.exclude == oldSelf.exclude) && has(self.gateway) == has(oldSelf.gateway) && (!has(self.gateway) || self.gateway == oldSelf.gateway)",message="the addresses of a pool (cidr, ranges, exclude, gateway) are immutable: create a new pool; only routes may change"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.cidr) || !has(self.gateway) || !isIP(self.gateway) || !(cidr(self.cidr).ip() == ip(self.gateway))",message="gateway must not be the subnet's network address",fieldPath=".gateway"
// +kubebuilder:validation:XValidation:rule="!has(self.routes) || self.routes.all(r, !has(r.via) || !isIP(r.via) || !isCIDR(r.dst) || ip(r.via).family() == cidr(r.dst).ip().family())",message="a route's via must be of its dst's address family",fieldPath=".routes"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.cidr) || !has(self.ranges) || self.ranges.all(r, !isIP(r.start) || !isIP(r.end) || (cidr(self.cidr).containsIP(r.start) && cidr(self.cidr).containsIP(r.end)))",message="every range must lie inside cidr",fieldPath=".ranges"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.cidr) || !has(self.ranges) || !self.ranges.all(r, isIP(r.start) && isIP(r.end) && ip(r.start).family() == cidr(self.cidr).ip().family() && ip(r.end).family() == cidr(self.cidr).ip().family()) || self.ranges.all(i, a, self.ranges.all(j, b, i >= j || (ip(a.end).family() == 4 ? {'/0': '/1', '/1': '/2', '/2': '/3', '/3': '/4', '/4': '/5', '/5': '/6', '/6': '/7', '/7': '/8', '/8': '/9', '/9': '/10', '/10': '/11', '/11': '/12', '/12': '/13', '/13': '/14', '/14': '/15', '/15': '/16', '/16': '/17', '/17': '/18', '/18': '/19', '/19': '/20', '/20': '/21', '/21': '/22', '/22': '/23', '/23': '/24', '/24': '/25', '/25': '/26', '/26': '/27', '/27': '/28', '/28': '/29', '/29': '/30', '/30': '/31', '/31': '/32'}.exists(pa, pb, cidr(a.end + pa).masked() == cidr(b.start + pa).masked() && cidr(a.end + pb).masked().ip() == cidr(a.end + pa).masked().ip() && !(cidr(b.start + pb).masked().ip() == cidr(b.start + pa).masked().ip())) : {'/0': '/1', '/1': '/2', '/2': '/3', '/3': '/4', '/4': '/5', '/5': '/6', '/6': '/7', '/7': '/8', '/8': '/9', '/9': '/10', '/10': '/11', '/11': '/12', '/12': '/13', '/13': '/14', '/14': '/15', '/15': '/16', '/16': '/17', '/17': '/18', '/18': '/19', '/19': '/20', '/20': '/21', '/21': '/22', '/22': '/23', '/23': '/24', '/24': '/25', '/25': '/26', '/26': '/27', '/27': '/28', '/28': '/29', '/29': '/30', '/30': '/31', '/31': '/32', '/32': '/33', '/33': '/34', '/34': '/35', '/35': '/36', '/36': '/37', '/37': '/38', '/38': '/39', '/39': '/40', '/40': '/41', '/41': '/42', '/42': '/43', '/43': '/44', '/44': '/45', '/45': '/46', '/46': '/47', '/47': '/48', '/48': '/49', '/49': '/50', '/50': '/51', '/51': '/52', '/52': '/53', '/53': '/54', '/54': '/55', '/55': '/56', '/56': '/57', '/57': '/58', '/58': '/59', '/59': '/60', '/60': '/61', '/61': '/62', '/62': '/63', '/63': '/64', '/64': '/65', '/65': '/66', '/66': '/67', '/67': '/68', '/68': '/69', '/69': '/70', '/70': '/71', '/71': '/72', '/72': '/73', '/73': '/74', '/74': '/75', '/75': '/76', '/76': '/77', '/77': '/78', '/78': '/79', '/79': '/80', '/80': '/81', '/81': '/82', '/82': '/83', '/83': '/84', '/84': '/85', '/85': '/86', '/86': '/87', '/87': '/88', '/88': '/89', '/89': '/90', '/90': '/91', '/91': '/92', '/92': '/93', '/93': '/94', '/94': '/95', '/95': '/96', '/96': '/97', '/97': '/98', '/98': '/99', '/99': '/100', '/100': '/101', '/101': '/102', '/102': '/103', '/103': '/104', '/104': '/105', '/105': '/106', '/106': '/107', '/107': '/108', '/108': '/109', '/109': '/110', '/110': '/111', '/111': '/112', '/112': '/113', '/113': '/114', '/114': '/115', '/115': '/116', '/116': '/117', '/117': '/118', '/118': '/119', '/119': '/120', '/120': '/121', '/121': '/122', '/122': '/123', '/123': '/124', '/124': '/125', '/125': '/126', '/126': '/127', '/127': '/128'}.exists(pa, pb, cidr(a.end + pa).masked() == cidr(b.start + pa).masked() && cidr(a.end + pb).masked().ip() == cidr(a.end + pa).masked().ip() && !(cidr(b.start + pb).masked().ip() == cidr(b.start + pa).masked().ip()))) || (ip(b.end).family() == 4 ? {'/0': '/1', '/1': '/2', '/2': '/3', '/3': '/4', '/4': '/5', '/5': '/6', '/6': '/7', '/7': '/8', '/8': '/9', '/9': '/10', '/10': '/11', '/11': '/12', '/12': '/13', '/13': '/14', '/14': '/15', '/15': '/16', '/16': '/17', '/17': '/18', '/18': '/19', '/19': '/20', '/20': '/21', '/21': '/22', '/22': '/23', '/23': '/24', '/24': '/25', '/25': '/26', '/26': '/27', '/27': '/28', '/28': '/29', '/29': '/30', '/30': '/31', '/31': '/32'}.exists(pa, pb, cidr(b.end + pa).masked() == cidr(a.start + pa).masked() && cidr(b.end + pb).masked().ip() == cidr(b.end + pa).masked().ip() && !(cidr(a.start + pb).masked().ip() == cidr(a.start + pa).masked().ip())) : {'/0': '/1', '/1': '/2', '/2': '/3', '/3': '/4', '/4': '/5', '/5': '/6', '/6': '/7', '/7': '/8', '/8': '/9', '/9': '/10', '/10': '/11', '/11': '/12', '/12': '/13', '/13': '/14', '/14': '/15', '/15': '/16', '/16': '/17', '/17': '/18', '/18': '/19', '/19': '/20', '/20': '/21', '/21': '/22', '/22': '/23', '/23': '/24', '/24': '/25', '/25': '/26', '/26': '/27', '/27': '/28', '/28': '/29', '/29': '/30', '/30': '/31', '/31': '/32', '/32': '/33', '/33': '/34', '/34': '/35', '/35': '/36', '/36': '/37', '/37': '/38', '/38': '/39', '/39': '/40', '/40': '/41', '/41': '/42', '/42': '/43', '/43': '/44', '/44': '/45', '/45': '/46', '/46': '/47', '/47': '/48', '/48': '/49', '/49': '/50', '/50': '/51', '/51': '/52', '/52': '/53', '/53': '/54', '/54': '/55', '/55': '/56', '/56': '/57', '/57': '/58', '/58': '/59', '/59': '/60', '/60': '/61', '/61': '/62', '/62': '/63', '/63': '/64', '/64': '/65', '/65': '/66', '/66': '/67', '/67': '/68', '/68': '/69', '/69': '/70', '/70': '/71', '/71': '/72', '/72': '/73', '/73': '/74', '/74': '/75', '/75': '/76', '/76': '/77', '/77': '/78', '/78': '/79', '/79': '/80', '/80': '/81', '/81': '/82', '/82': '/83', '/83': '/84', '/84': '/85', '/85': '/86', '/86': '/87', '/87': '/88', '/88': '/89', '/89': '/90', '/90': '/91', '/91': '/92', '/92': '/93', '/93': '/94', '/94': '/95', '/95': '/96', '/96': '/97', '/97': '/98', '/98': '/99', '/99': '/100', '/100': '/101', '/101': '/102', '/102': '/103', '/103': '/104', '/104': '/105', '/105': '/106', '/106': '/107', '/107': '/108', '/108': '/109', '/109': '/110', '/110': '/111', '/111': '/112', '/112': '/113', '/113': '/114', '/114': '/115', '/115': '/116', '/116': '/117', '/117': '/118', '/118': '/119', '/119': '/120', '/120': '/121', '/121': '/122', '/122': '/123', '/123': '/124', '/124': '/125', '/125': '/126', '/126': '/127', '/127': '/128'}.exists(pa, pb, cidr(b.end + pa).masked() == cidr(a.start + pa).masked() && cidr(b.end + pb).masked().ip() == cidr(b.end + pa).masked().ip() && !(cidr(a.start + pb).masked().ip() == cidr(a.start + pa).masked().ip())))))",message="ranges must not overlap",fieldPath=".ranges"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.cidr) || !has(self.gateway) || !isIP(self.gateway) || cidr(self.cidr).containsIP(self.gateway)",messageExpression="'gateway ' + self.gateway + ' must lie inside cidr ' + self.cidr",fieldPath=".gateway"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.cidr) || !has(self.exclude) || self.exclude.all(x, isCIDR(x) ? cidr(self.cidr).containsCIDR(x) : (!isIP(x) || cidr(self.cidr).containsIP(x)))",message="every exclusion must lie inside cidr",fieldPath=".exclude"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.cidr) || !has(self.routes) || self.routes.all(r, !isCIDR(r.dst) || cidr(r.dst).ip().family() == cidr(self.cidr).ip().family())",message="every route must be of the subnet's address family",fieldPath=".routes"
type Subnet struct {
	// CIDR is the subnet, without host bits (10.0.0.0/24, not 10.0.0.5/24);
	// IPv6 in canonical form (lower case, shortest).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",messageExpression="'cidr ' + self + ' is not a CIDR such as 10.0.0.0/24 or fd00::/64'"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || string(cidr(self).masked()) == self",messageExpression="'cidr ' + self + ' has host bits set or is not in canonical form: write the network address, e.g. 10.0.0.0/24 or fd00::/64'"
	CIDR string `json:"cidr"`

	// Ranges restricts allocation to these inclusive ranges of the subnet.
	// Unset means the whole subnet. Ranges must not overlap. At most 10: the
	// apiserver bounds the cost of the pairwise overlap check, and Exclude
	// carves holes more cheaply than many small ranges.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=10
	Ranges []IPRange `json:"ranges,omitempty"`

	// Exclude lists addresses (10.0.0.7) or CIDRs (10.0.0.64/28) inside the
	// subnet that are never allocated, e.g. routers or static hosts.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=49
	// +kubebuilder:validation:items:XValidation:rule="isIP(self) || isCIDR(self)",messageExpression="'exclusion ' + self + ' is neither an address nor a CIDR'"
	// +kubebuilder:validation:items:XValidation:rule="isIP(self) ? ip.isCanonical(self) : (!isCIDR(self) || string(cidr(self).masked()) == self)",messageExpression="'exclusion ' + self + ' is not canonical: write addresses in canonical form and CIDRs without host bits'"
	Exclude []string `json:"exclude,omitempty"`

	// Gateway is the default gateway given to pods for this family. Unset
	// gives the pod no default route of this family.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip.isCanonical(self)",messageExpression="'gateway ' + self + ' is not an address in canonical form'"
	Gateway string `json:"gateway,omitempty"`

	// Routes are extra routes given to pods, of this subnet's family.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Routes []Route `json:"routes,omitempty"`
}

// IPRange is an inclusive range of addresses, start <= end, of one family.
//
// +kubebuilder:validation:XValidation:rule="!isIP(self.start) || !isIP(self.end) || ip(self.start).family() == ip(self.end).family()",message="start and end must be of the same address family"
// +kubebuilder:validation:XValidation:rule="!isIP(self.start) || !isIP(self.end) || ip(self.start).family() != ip(self.end).family() || !((ip(self.end).family() == 4 ? {'/0': '/1', '/1': '/2', '/2': '/3', '/3': '/4', '/4': '/5', '/5': '/6', '/6': '/7', '/7': '/8', '/8': '/9', '/9': '/10', '/10': '/11', '/11': '/12', '/12': '/13', '/13': '/14', '/14': '/15', '/15': '/16', '/16': '/17', '/17': '/18', '/18': '/19', '/19': '/20', '/20': '/21', '/21': '/22', '/22': '/23', '/23': '/24', '/24': '/25', '/25': '/26', '/26': '/27', '/27': '/28', '/28': '/29', '/29': '/30', '/30': '/31', '/31': '/32'}.exists(pa, pb, cidr(self.end + pa).masked() == cidr(self.start + pa).masked() && cidr(self.end + pb).masked().ip() == cidr(self.end + pa).masked().ip() && !(cidr(self.start + pb).masked().ip() == cidr(self.start + pa).masked().ip())) : {'/0': '/1', '/1': '/2', '/2': '/3', '/3': '/4', '/4': '/5', '/5': '/6', '/6': '/7', '/7': '/8', '/8': '/9', '/9': '/10', '/10': '/11', '/11': '/12', '/12': '/13', '/13': '/14', '/14': '/15', '/15': '/16', '/16': '/17', '/17': '/18', '/18': '/19', '/19': '/20', '/20': '/21', '/21': '/22', '/22': '/23', '/23': '/24', '/24': '/25', '/25': '/26', '/26': '/27', '/27': '/28', '/28': '/29', '/29': '/30', '/30': '/31', '/31': '/32', '/32': '/33', '/33': '/34', '/34': '/35', '/35': '/36', '/36': '/37', '/37': '/38', '/38': '/39', '/39': '/40', '/40': '/41', '/41': '/42', '/42': '/43', '/43': '/44', '/44': '/45', '/45': '/46', '/46': '/47', '/47': '/48', '/48': '/49', '/49': '/50', '/50': '/51', '/51': '/52', '/52': '/53', '/53': '/54', '/54': '/55', '/55': '/56', '/56': '/57', '/57': '/58', '/58': '/59', '/59': '/60', '/60': '/61', '/61': '/62', '/62': '/63', '/63': '/64', '/64': '/65', '/65': '/66', '/66': '/67', '/67': '/68', '/68': '/69', '/69': '/70', '/70': '/71', '/71': '/72', '/72': '/73', '/73': '/74', '/74': '/75', '/75': '/76', '/76': '/77', '/77': '/78', '/78': '/79', '/79': '/80', '/80': '/81', '/81': '/82', '/82': '/83', '/83': '/84', '/84': '/85', '/85': '/86', '/86': '/87', '/87': '/88', '/88': '/89', '/89': '/90', '/90': '/91', '/91': '/92', '/92': '/93', '/93': '/94', '/94': '/95', '/95': '/96', '/96': '/97', '/97': '/98', '/98': '/99', '/99': '/100', '/100': '/101', '/101': '/102', '/102': '/103', '/103': '/104', '/104': '/105', '/105': '/106', '/106': '/107', '/107': '/108', '/108': '/109', '/109': '/110', '/110': '/111', '/111': '/112', '/112': '/113', '/113': '/114', '/114': '/115', '/115': '/116', '/116': '/117', '/117': '/118', '/118': '/119', '/119': '/120', '/120': '/121', '/121': '/122', '/122': '/123', '/123': '/124', '/124': '/125', '/125': '/126', '/126': '/127', '/127': '/128'}.exists(pa, pb, cidr(self.end + pa).masked() == cidr(self.start + pa).masked() && cidr(self.end + pb).masked().ip() == cidr(self.end + pa).masked().ip() && !(cidr(self.start + pb).masked().ip() == cidr(self.start + pa).masked().ip()))))",messageExpression="'range start ' + self.start + ' is greater than its end ' + self.end",fieldPath=".start"
type IPRange struct {
	// Start is the first address of the range.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip.isCanonical(self)",messageExpression="'range start ' + self + ' is not an address in canonical form'"
	Start string `json:"start"`
	// End is the last address of the range.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip.isCanonical(self)",messageExpression="'range end ' + self + ' is not an address in canonical form'"
	End string `json:"end"`
}

// Route is a route given to pods.
type Route struct {
	// Dst is the destination CIDR.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=49
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",messageExpression="'route dst ' + self + ' is not a CIDR'"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || string(cidr(self).masked()) == self",messageExpression="'route dst ' + self + ' has host bits set or is not canonical'"
	Dst string `json:"dst"`
	// Via is the next hop. Unset uses the subnet's gateway.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self)",messageExpression="'route via ' + self + ' is not an address'"
	Via string `json:"via,omitempty"`
}

// Warm holds the pre-warming knobs of a pool. Per node, the allocator keeps
//
//	max(minWarm, pods bound to the node without an address + warmTarget)
//
// addresses warm, capped by maxWarm. Example with the defaults (2, 4, 64):
// an idle node keeps max(2, 0+4) = 4; a node that was just bound 30 pods
// keeps max(2, 30+4) = 34; one bound 100 pods keeps min(104, 64) = 64. Under
// scarcity each node's share shrinks to its fair share of the free addresses.
//
// The fields are pointers so that an explicit 0 (e.g. maxWarm: 0, no warm
// cache at all) is kept rather than defaulted; Resolved reads them.
//
// +kubebuilder:validation:XValidation:rule="self.minWarm <= self.maxWarm",message="minWarm must not exceed maxWarm",fieldPath=".minWarm"
type Warm struct {
	// MinWarm is the floor of warm addresses on an eligible node, demand or not.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4096
	MinWarm *int32 `json:"minWarm,omitempty"`
	// WarmTarget is the least headroom kept on top of the node's current
	// demand; a node serving a stream of ADDs keeps about those its rate
	// predicts for the next 30 s instead, when more and the pool can
	// afford it on every node.
	// +optional
	// +kubebuilder:default=4
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4096
	WarmTarget *int32 `json:"warmTarget,omitempty"`
	// MaxWarm caps the warm addresses on one node.
	// +optional
	// +kubebuilder:default=64
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4096
	MaxWarm *int32 `json:"maxWarm,omitempty"`
}

// Defaults of the warm knobs, the same as the CRD's.
const (
	DefaultMinWarm    int32 = 2
	DefaultWarmTarget int32 = 4
	DefaultMaxWarm    int32 = 64
)

// WarmKnobs are the warm knobs with the defaults filled in.
type WarmKnobs struct {
	MinWarm, WarmTarget, MaxWarm int32
}

// Resolved returns the knobs with a default for each unset one. The
// apiserver defaults them on write; this covers objects built in code.
func (w *Warm) Resolved() WarmKnobs {
	k := WarmKnobs{DefaultMinWarm, DefaultWarmTarget, DefaultMaxWarm}
	if w == nil {
		return k
	}
	if w.MinWarm != nil {
		k.MinWarm = *w.MinWarm
	}
	if w.WarmTarget != nil {
		k.WarmTarget = *w.WarmTarget
	}
	if w.MaxWarm != nil {
		k.MaxWarm = *w.MaxWarm
	}
	return k
}

// IPPoolStatus is written by the allocator. Counts are of allocation units:
// an IPv4/IPv6 pair counts once in a dual-stack pool. A count that does not
// fit (a large IPv6 subnet) saturates at 2^63-1. Zero counts are written out:
// free: 0 is what an exhausted pool shows.
type IPPoolStatus struct {
	// ObservedGeneration is the spec generation the counts were computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Total is the number of allocatable units.
	// +optional
	Total int64 `json:"total"`
	// Free is the number of units held by no node.
	// +optional
	Free int64 `json:"free"`
	// Warm is the number of units leased to a node and not assigned to a pod.
	// +optional
	Warm int64 `json:"warm"`
	// Assigned is the number of units assigned to pods.
	// +optional
	Assigned int64 `json:"assigned"`
	// Pending is the number of pods that need an address of the pool and
	// have none yet, at the allocator's last planning round.
	// +optional
	Pending int64 `json:"pending"`
	// Hits and Misses count the ADDs served from a node's warm cache and
	// the ones that had to ask the allocator, as the agents reported them
	// (a new leader continues from the counts written here).
	// +optional
	Hits int64 `json:"hits"`
	// +optional
	Misses int64 `json:"misses"`
	// Conditions: Ready (the allocator accepted the pool) and Exhausted (no
	// free and no warm unit is left).
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Condition types of an IPPool.
const (
	// PoolReady is true once the allocator has loaded the pool and its leases.
	PoolReady = "Ready"
	// PoolExhausted is true while the pool has neither a free nor a warm unit.
	PoolExhausted = "Exhausted"
)

// IPPoolList is a list of IPPools.
//
// +kubebuilder:object:root=true
type IPPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPPool `json:"items"`
}

// NodeLease is the allocator's durable record of the units of one pool
// leased to one node. It is written only by the leader allocator, and only
// when units move (grants and returns, batched per node and pool per
// planning round): an ADD or a DEL never writes it, since which unit is
// assigned to which pod is the node agent's fact, kept in its own store. Its name
// is NodeLeaseName(pool, node); spec.pool and spec.node are authoritative.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=nl,categories=warmpool
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.pool`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.node`
// +kubebuilder:printcolumn:name="Epoch",type=integer,JSONPath=`.spec.epoch`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NodeLease struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec NodeLeaseSpec `json:"spec"`
}

// NodeLeaseSpec lists what one node holds of one pool.
//
// +kubebuilder:validation:XValidation:rule="self.pool == oldSelf.pool && self.node == oldSelf.node",message="pool and node are immutable"
type NodeLeaseSpec struct {
	// Pool is the IPPool the units belong to.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Pool string `json:"pool"`
	// Node is the node holding them.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`
	// Epoch is the leader epoch of the allocator that last wrote the lease;
	// agents ignore messages from a lower epoch than the highest they saw.
	// +kubebuilder:validation:Minimum=0
	Epoch int64 `json:"epoch"`
	// Units are the units leased to the node, warm or assigned there (its
	// agent knows which). The allocator writes the lease only when units
	// move: a grant, a return under scarcity, a lost node's units coming
	// back. At most 4096 (a dual-stack unit is ~60 bytes of JSON).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=4096
	Units []LeasedUnit `json:"units,omitempty"`
}

// LeasedUnit is one allocation unit (an address, or an IPv4/IPv6 pair in a
// dual-stack pool) leased to a node. The lease says only which units the
// node holds: whether one is warm or assigned, and to which pod, is the
// node agent's record (its /state endpoint), never written to the API.
//
// +kubebuilder:validation:XValidation:rule="has(self.ipv4) || has(self.ipv6)",message="a unit needs ipv4, ipv6 or both"
type LeasedUnit struct {
	// IPv4 is the unit's IPv4 address, in a pool with ipv4.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	IPv4 string `json:"ipv4,omitempty"`
	// IPv6 is the unit's IPv6 address, in a pool with ipv6.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	IPv6 string `json:"ipv6,omitempty"`
}

// ID is the unit's key within its pool, the one the allocator's ledger
// and the agent's store use (store.Unit.ID): its IPv4, or its IPv6 in an
// IPv6-only pool.
func (u LeasedUnit) ID() string {
	if u.IPv4 != "" {
		return u.IPv4
	}
	return u.IPv6
}

// NodeLeaseList is a list of NodeLeases.
//
// +kubebuilder:object:root=true
type NodeLeaseList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NodeLease `json:"items"`
}
