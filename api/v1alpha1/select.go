package v1alpha1

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// PoolAnnotation on a pod, or on its namespace, names the pool its
// attachments use when the network config names none.
const PoolAnnotation = "warmpool.io/pool"

// Errors of SelectPool.
var (
	ErrNoPool        = errors.New("no IPPool selects the pod")
	ErrAmbiguousPool = errors.New("several IPPools select the pod")
)

// PoolChoice is what SelectPool decided and why.
//
// +kubebuilder:object:generate=false
type PoolChoice struct {
	Name string
	// Source says what named it, for error messages: an annotation, or
	// "selectors".
	Source string
	// Candidates are the pools whose selectors matched, when there were
	// several (ErrAmbiguousPool).
	Candidates []string
}

// SelectPool applies the pool rules shared by the agent (at ADD) and the
// allocator (to count a pod as demand): the pod's PoolAnnotation, else its
// namespace's, else the one pool whose selectors match the pod, its
// namespace and its node. A nil nodeLabels means the node is not known yet
// (an unbound pod): nodeSelectors are then not applied. The named pool is
// not checked to exist.
func SelectPool(podAnnotations, podLabels, nsAnnotations, nsLabels, nodeLabels map[string]string, namespace string, pools []*IPPool) (PoolChoice, error) {
	return CompileSelectors(pools).Select(podAnnotations, podLabels, nsAnnotations, nsLabels, nodeLabels, namespace)
}

// Selectors are pools' selectors, parsed once: matching a pod against
// them is SelectPool without parsing (and validating) every selector
// again, for the allocator's rounds, which match every pod.
//
// +kubebuilder:object:generate=false
type Selectors []PoolSelectors

// PoolSelectors are one pool's parsed selectors.
//
// +kubebuilder:object:generate=false
type PoolSelectors struct {
	Pool                 string
	Namespace, Pod, Node labels.Selector
}

// CompileSelectors parses the pools' selectors.
func CompileSelectors(pools []*IPPool) Selectors {
	out := make(Selectors, 0, len(pools))
	for _, p := range pools {
		out = append(out, PoolSelectors{Pool: p.Name, Namespace: selector(p.Spec.NamespaceSelector),
			Pod: selector(p.Spec.PodSelector), Node: selector(p.Spec.NodeSelector)})
	}
	return out
}

// Select is SelectPool over parsed selectors.
func (s Selectors) Select(podAnnotations, podLabels, nsAnnotations, nsLabels, nodeLabels map[string]string, namespace string) (PoolChoice, error) {
	if name := podAnnotations[PoolAnnotation]; name != "" {
		return PoolChoice{Name: name, Source: "the pod's " + PoolAnnotation + " annotation"}, nil
	}
	if name := nsAnnotations[PoolAnnotation]; name != "" {
		return PoolChoice{Name: name, Source: "namespace " + namespace + "'s " + PoolAnnotation + " annotation"}, nil
	}
	var matches []string
	for _, p := range s {
		if p.Namespace.Matches(labels.Set(nsLabels)) && p.Pod.Matches(labels.Set(podLabels)) &&
			(nodeLabels == nil || p.Node.Matches(labels.Set(nodeLabels))) {
			matches = append(matches, p.Pool)
		}
	}
	slices.Sort(matches)
	switch len(matches) {
	case 0:
		return PoolChoice{}, ErrNoPool
	case 1:
		return PoolChoice{Name: matches[0], Source: "selectors"}, nil
	default:
		return PoolChoice{Candidates: matches}, fmt.Errorf("%w: %s", ErrAmbiguousPool, strings.Join(matches, ", "))
	}
}

// Selects reports whether a label selector matches a label set; a nil
// selector matches everything, an invalid one nothing.
func Selects(sel *metav1.LabelSelector, set map[string]string) bool {
	return selector(sel).Matches(labels.Set(set))
}

func selector(sel *metav1.LabelSelector) labels.Selector {
	if sel == nil {
		return labels.Everything()
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return labels.Nothing()
	}
	return s
}
