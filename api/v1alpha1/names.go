package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// NodeLeaseName returns the name of the NodeLease of pool on node: a
// readable prefix, "<pool>.<node>" cut to fit, then a hash of the pair.
// Pool and node names may both contain dots, so the prefix alone is
// ambiguous (pool "a.b" on node "c" and pool "a" on node "b.c"); the hash is
// of the length-prefixed pair, which is not. The result is a valid DNS
// subdomain of at most 253 characters.
func NodeLeaseName(pool, node string) string {
	sum := sha256.Sum256([]byte(strconv.Itoa(len(pool)) + ":" + pool + node))
	hash := hex.EncodeToString(sum[:8])
	prefix := pool + "." + node
	if max := 253 - 1 - len(hash); len(prefix) > max {
		prefix = prefix[:max]
	}
	// A DNS subdomain label must end with an alphanumeric: a cut may leave
	// a dot or a dash at the end.
	prefix = strings.TrimRight(prefix, ".-")
	return prefix + "-" + hash
}
