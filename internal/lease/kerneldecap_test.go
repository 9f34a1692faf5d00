package lease

import (
	"context"
	"strings"
	"testing"
	"time"
)

// WeftUDPKernelDecap comes after WeftNodeName, only when true: a value
// without it is byte for byte what weft wrote before (and flanneld reads).
func TestUDPKernelDecapCodec(t *testing.T) {
	a := Attrs{PublicIP: hostIP(1), BackendType: "udp", NodeName: "n1"}
	b, err := a.MarshalJSON()
	if want := `{"PublicIP":"` + hostIP(1).String() + `","PublicIPv6":null,"BackendType":"udp","WeftNodeName":"n1"}`; err != nil || string(b) != want {
		t.Fatalf("marshal without the flag: %s, %v; want %s", b, err, want)
	}
	a.UDPKernelDecap = true
	b, err = a.MarshalJSON()
	if err != nil || !strings.HasSuffix(string(b), `,"WeftNodeName":"n1","WeftUDPKernelDecap":true}`) {
		t.Fatalf("marshal with the flag: %s, %v; want it last, after WeftNodeName", b, err)
	}
	back, err := ParseAttrs(b)
	if err != nil || !back.UDPKernelDecap || back.NodeName != "n1" {
		t.Fatalf("parse %s: %+v, %v", b, back, err)
	}
	for _, v := range []string{`{"PublicIP":"10.0.0.1","WeftUDPKernelDecap":false}`, `{"PublicIP":"10.0.0.1"}`} {
		if a, err := ParseAttrs([]byte(v)); err != nil || a.UDPKernelDecap {
			t.Errorf("parse %s: %+v, %v; want no flag", v, a, err)
		}
	}
}

// The flag is written at acquisition when configured, and Update turns it
// off and on again, rewriting the lease each time (the in-kernel path
// detached or re-attached after the lease was written).
func TestUDPKernelDecapUpdate(t *testing.T) {
	_, _, s, _ := newTestStore(t)
	log, _ := newLogger()
	m := newTestManager(s, testNet(), hostIP(2), log)
	m.cfg.NodeName = "host-k"
	m.cfg.UDPKernelDecap = true
	own := runManager(t, m)
	if val := readValue(t, s, own); !strings.HasSuffix(val, `"WeftNodeName":"host-k","WeftUDPKernelDecap":true}`) {
		t.Fatalf("acquired value %s: want WeftUDPKernelDecap true last", val)
	}
	for _, on := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := m.Update(ctx, Update{UDPKernelDecap: &on})
		cancel()
		if err != nil {
			t.Fatalf("Update(UDPKernelDecap %v): %v", on, err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			val := readValue(t, s, own)
			if strings.Contains(val, "WeftUDPKernelDecap") == on {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after Update(UDPKernelDecap %v) the value is %s", on, val)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
