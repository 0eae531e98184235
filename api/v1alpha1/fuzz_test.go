package v1alpha1

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// FuzzNodeLeaseName: for any pool and node names, NodeLeaseName does not
// panic and is deterministic; for valid names (DNS subdomains, as the
// apiserver checks them) its result is a DNS subdomain of at most 253
// characters, "<pool>.<node>-<16 hex>" whole when that fits, and two
// different pairs never share a name.
func FuzzNodeLeaseName(f *testing.F) {
	f.Add("underlay-dual", "node-1", "underlay", "dual.node-1")
	f.Add("a.b", "c", "a", "b.c")
	f.Fuzz(func(t *testing.T, pool, node, pool2, node2 string) {
		name := NodeLeaseName(pool, node)
		if NodeLeaseName(pool, node) != name {
			t.Fatalf("NodeLeaseName(%q, %q) is not deterministic", pool, node)
		}
		hash := regexp.MustCompile(`-[0-9a-f]{16}$`)
		if !hash.MatchString(name) {
			t.Fatalf("NodeLeaseName(%q, %q) = %q: no hash suffix", pool, node, name)
		}
		if (pool2 != pool || node2 != node) && NodeLeaseName(pool2, node2) == name {
			t.Fatalf("NodeLeaseName(%q, %q) = NodeLeaseName(%q, %q) = %q", pool, node, pool2, node2, name)
		}
		if len(validation.IsDNS1123Subdomain(pool)) > 0 || len(validation.IsDNS1123Subdomain(node)) > 0 {
			return
		}
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.Fatalf("NodeLeaseName(%q, %q) = %q: %v", pool, node, name, errs)
		}
		if prefix := pool + "." + node; len(prefix) <= 253-17 && name[:len(name)-17] != prefix {
			t.Fatalf("NodeLeaseName(%q, %q) = %q: lost its readable prefix %q", pool, node, name, prefix)
		}
	})
}

// fuzzLabels reads "k=v,k=v" (a pair without "=" has an empty value).
func fuzzLabels(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// fuzzSelector makes a selector from s and says which label sets it
// matches, worked out without the selector machinery Selects uses:
//
//   - "" is no selector: it matches everything;
//   - "=k=v,k=v" is matchLabels as given, valid only if every key is a
//     qualified name and every value a label value;
//   - anything else is kubectl's syntax ("a=b,c in (d,e),!f"), read by
//     metav1.ParseToLabelSelector; what does not parse becomes a selector
//     with an unknown operator.
//
// An invalid selector matches nothing.
func fuzzSelector(s string) (*metav1.LabelSelector, func(map[string]string) bool) {
	none := func(map[string]string) bool { return false }
	if s == "" {
		return nil, func(map[string]string) bool { return true }
	}
	var sel *metav1.LabelSelector
	if raw, ok := strings.CutPrefix(s, "="); ok {
		sel = &metav1.LabelSelector{MatchLabels: fuzzLabels(raw)}
		for k, v := range sel.MatchLabels {
			if len(validation.IsQualifiedName(k)) > 0 || len(validation.IsValidLabelValue(v)) > 0 {
				return sel, none
			}
		}
	} else {
		var err error
		if sel, err = metav1.ParseToLabelSelector(s); err != nil {
			return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: "Frob"}}}, none
		}
	}
	return sel, func(set map[string]string) bool {
		for k, v := range sel.MatchLabels {
			if got, ok := set[k]; !ok || got != v {
				return false
			}
		}
		for _, r := range sel.MatchExpressions {
			v, has := set[r.Key]
			switch r.Operator {
			case metav1.LabelSelectorOpIn:
				if !has || !slices.Contains(r.Values, v) {
					return false
				}
			case metav1.LabelSelectorOpNotIn:
				if has && slices.Contains(r.Values, v) {
					return false
				}
			case metav1.LabelSelectorOpExists:
				if !has {
					return false
				}
			case metav1.LabelSelectorOpDoesNotExist:
				if has {
					return false
				}
			}
		}
		return true
	}
}

// FuzzSelectPool: SelectPool never panics, and applies the documented
// rules: the pod's annotation, else its namespace's, else the one pool
// whose three selectors match (the node's only when the node is known); no
// match is ErrNoPool, several ErrAmbiguousPool with the candidates sorted.
// Invalid selectors match nothing. The choice does not depend on the order
// of the pools, an unknown node never matches fewer pools than a known
// one, and Picks names exactly the pools that select the pod.
func FuzzSelectPool(f *testing.F) {
	f.Add("", "", "app=web", "team=a", "zone=x", true, "team=a||", "|app=web|", "||zone in (x,y)", "||zone=y")
	f.Add("pool-9", "", "", "", "", false, "", "", "", "")
	f.Add("", "pool-8", "", "", "", true, "", "", "", "")
	f.Add("", "", "app=web", "", "", true, "|app!=web|", "|!app|", "|app|", "|app in ()|")
	f.Fuzz(func(t *testing.T, podAnn, nsAnn, podLbl, nsLbl, nodeLbl string, nodeKnown bool, s0, s1, s2, s3 string) {
		podLabels, nsLabels := fuzzLabels(podLbl), fuzzLabels(nsLbl)
		var nodeLabels map[string]string
		if nodeKnown {
			nodeLabels = fuzzLabels(nodeLbl)
			if nodeLabels == nil {
				nodeLabels = map[string]string{}
			}
		}
		var pools []*IPPool
		var wantAll, wantAnyNode []string
		for i, spec := range []string{s0, s1, s2, s3} {
			parts := strings.SplitN(spec, "|", 3)
			for len(parts) < 3 {
				parts = append(parts, "")
			}
			nsSel, nsOK := fuzzSelector(parts[0])
			podSel, podOK := fuzzSelector(parts[1])
			nodeSel, nodeOK := fuzzSelector(parts[2])
			name := fmt.Sprintf("pool-%d", i)
			pools = append(pools, &IPPool{ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: IPPoolSpec{NamespaceSelector: nsSel, PodSelector: podSel, NodeSelector: nodeSel}})
			if nsOK(nsLabels) && podOK(podLabels) {
				wantAnyNode = append(wantAnyNode, name)
				if nodeLabels == nil || nodeOK(nodeLabels) {
					wantAll = append(wantAll, name)
				}
			}
		}
		podAnns := map[string]string{PoolAnnotation: podAnn, "other": "x"}
		nsAnns := map[string]string{PoolAnnotation: nsAnn}
		choice, err := SelectPool(podAnns, podLabels, nsAnns, nsLabels, nodeLabels, "ns", pools)
		reversed := slices.Clone(pools)
		slices.Reverse(reversed)
		if c2, err2 := SelectPool(podAnns, podLabels, nsAnns, nsLabels, nodeLabels, "ns", reversed); fmt.Sprint(c2, err2) != fmt.Sprint(choice, err) {
			t.Fatalf("the order of the pools changed the choice: %+v %v, then %+v %v", choice, err, c2, err2)
		}
		switch {
		case podAnn != "":
			if err != nil || choice.Name != podAnn || choice.Source != "the pod's warmpool.io/pool annotation" {
				t.Fatalf("pod annotation %q: %+v %v", podAnn, choice, err)
			}
			return
		case nsAnn != "":
			if err != nil || choice.Name != nsAnn || choice.Source != "namespace ns's warmpool.io/pool annotation" {
				t.Fatalf("namespace annotation %q: %+v %v", nsAnn, choice, err)
			}
			return
		}
		switch len(wantAll) {
		case 0:
			if !errors.Is(err, ErrNoPool) || choice.Name != "" {
				t.Fatalf("no pool should match: %+v %v", choice, err)
			}
		case 1:
			if err != nil || choice.Name != wantAll[0] || choice.Source != "selectors" {
				t.Fatalf("%s should match alone: %+v %v", wantAll[0], choice, err)
			}
		default:
			if !errors.Is(err, ErrAmbiguousPool) || !slices.Equal(choice.Candidates, wantAll) || choice.Name != "" ||
				err.Error() != "several IPPools select the pod: "+strings.Join(wantAll, ", ") {
				t.Fatalf("%v should match: %+v %v", wantAll, choice, err)
			}
		}
		// Not knowing the node only widens the choice.
		if nodeLabels != nil {
			c, err := SelectPool(nil, podLabels, nil, nsLabels, nil, "ns", pools)
			got := c.Candidates
			if err == nil {
				got = []string{c.Name}
			} else if errors.Is(err, ErrNoPool) {
				got = nil
			}
			if !slices.Equal(got, wantAnyNode) {
				t.Fatalf("with the node unknown: %v, want %v", got, wantAnyNode)
			}
			for _, name := range wantAll {
				if !slices.Contains(got, name) {
					t.Fatalf("%s matches on the node but not with the node unknown", name)
				}
			}
		}
	})
}
