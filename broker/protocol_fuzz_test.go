package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// messages returns a fresh value of every message type on the bus.
func messages() []any {
	return []any{
		&Grant{}, &Ack{}, &Revoke{}, &Revoked{},
		&MissRequest{}, &MissReply{}, &Report{}, &ReportReply{}, &SyncRequest{}, &SyncReply{},
	}
}

// fresh returns a new zero value of msg's type.
func fresh(msg any) any { return reflect.New(reflect.TypeOf(msg).Elem()).Interface() }

// canonical returns a copy of v in which every empty slice is nil: an
// empty list under omitempty does not survive a round trip, and means the
// same as none.
func canonical(v any) any {
	c := reflect.New(reflect.TypeOf(v).Elem())
	c.Elem().Set(canonicalValue(reflect.ValueOf(v).Elem()))
	return c.Interface()
}

func canonicalValue(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Slice:
		if v.Len() == 0 {
			return reflect.Zero(v.Type())
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			c.Index(i).Set(canonicalValue(v.Index(i)))
		}
		return c
	case reflect.Struct:
		c := reflect.New(v.Type()).Elem()
		for i := range v.NumField() {
			c.Field(i).Set(canonicalValue(v.Field(i)))
		}
		return c
	}
	return v
}

// FuzzDecode: for arbitrary bytes, Decode into every message type never
// panics. It fails with ErrVersion exactly when the bytes are a JSON
// object whose "v" is not ProtocolVersion, and every failure names the
// type. What decodes has v = ProtocolVersion and round-trips: Encode does
// not panic, its output decodes to an equal value (empty lists aside), and
// encoding that gives the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"v":2}`))
	f.Add(Encode(&Grant{V: ProtocolVersion, Epoch: 3, Node: "node-1", Gen: 7, Pool: PoolInfo{Name: "dual", Prefix4: 24, Gateway4: "10.0.0.1",
		Routes: []Route{{Dst: "0.0.0.0/0", GW: "10.0.0.1"}}}, Units: []Unit{{ID: "10.0.0.5", IPv4: "10.0.0.5", IPv6: "fd00::5"}}}))
	f.Add(Encode(&Report{V: ProtocolVersion, Node: "n", Run: "r", Seq: 2, Pools: map[string]Addressed{"p": {Assigned: 2, Pods: []string{"x", PodKey("a", "b", "")}}},
		Served: map[string]Served{"p": {Hits: 3, Misses: 1}}}))
	f.Add([]byte(`{"v":1,"epoch":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var head struct {
			V int `json:"v"`
		}
		headErr := json.Unmarshal(data, &head)
		for _, zero := range messages() {
			msg := fresh(zero)
			name := fmt.Sprintf("%T", msg)
			err := Decode(data, msg)
			if err != nil {
				if !strings.HasPrefix(err.Error(), "decode "+name+": ") {
					t.Fatalf("%s: error %q does not name the type", name, err)
				}
				if isVersion := errors.Is(err, ErrVersion); isVersion != (headErr == nil && head.V != ProtocolVersion) {
					t.Fatalf("%s from %q: %v (version error %v), but the head decodes to v%d, %v", name, data, err, isVersion, head.V, headErr)
				}
				continue
			}
			if headErr != nil || head.V != ProtocolVersion || !json.Valid(data) {
				t.Fatalf("%s: accepted %q (head v%d, %v)", name, data, head.V, headErr)
			}
			if v := reflect.ValueOf(msg).Elem().FieldByName("V").Int(); v != ProtocolVersion {
				t.Fatalf("%s: decoded %q with v%d", name, data, v)
			}
			enc := Encode(msg)
			again := fresh(zero)
			if err := Decode(enc, again); err != nil {
				t.Fatalf("%s: our own encoding %s (of %q) does not decode: %v", name, enc, data, err)
			}
			if !reflect.DeepEqual(canonical(msg), canonical(again)) {
				t.Fatalf("%s: round trip changed the message:\n%+v\n%+v\nvia %s", name, msg, again, enc)
			}
			if enc2 := Encode(again); !bytes.Equal(enc, enc2) {
				t.Fatalf("%s: encoding is not a fixpoint:\n%s\n%s", name, enc, enc2)
			}
		}
	})
}

// FuzzSplitAttachment: SplitAttachment inverts Attachment's
// "<containerID>/<ifname>" (wire.Attachment.String) for every ifname
// without a "/" (no interface name has one), whatever the container ID;
// and what it returns always joins back to its input.
func FuzzSplitAttachment(f *testing.F) {
	f.Add("9ad3c1/eth0", "9ad3c1", "eth0")
	f.Add("", "", "")
	f.Add("a/b/c", "a/b", "c")
	f.Add("noslash", "noslash", "")
	f.Fuzz(func(t *testing.T, att, ctr, ifname string) {
		c, i := SplitAttachment(att)
		if strings.Contains(i, "/") {
			t.Fatalf("SplitAttachment(%q) = %q, %q: the ifname has a /", att, c, i)
		}
		if strings.Contains(att, "/") {
			if c+"/"+i != att {
				t.Fatalf("SplitAttachment(%q) = %q, %q, which does not join back", att, c, i)
			}
		} else if c != att || i != "" {
			t.Fatalf("SplitAttachment(%q) = %q, %q; want the whole as the container ID", att, c, i)
		}
		if strings.Contains(ifname, "/") {
			return
		}
		if c, i := SplitAttachment(ctr + "/" + ifname); c != ctr || i != ifname {
			t.Fatalf("SplitAttachment(%q) = %q, %q; want %q, %q", ctr+"/"+ifname, c, i, ctr, ifname)
		}
	})
}
