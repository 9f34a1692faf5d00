package lease

import (
	"encoding/json"
	"net"
	"testing"
)

// agree compares two readings; present means nothing beside an error.
func agree(m1 net.HardwareAddr, p1 bool, e1 error, m2 net.HardwareAddr, p2 bool, e2 error) bool {
	if (e1 == nil) != (e2 == nil) {
		return false
	}
	return e1 != nil || (m1.String() == m2.String() && p1 == p2)
}

// TestVtepMACFastPathAgrees: the canonical form and anything else must read
// the same as encoding/json reads them.
func TestVtepMACFastPathAgrees(t *testing.T) {
	for _, raw := range []string{
		`{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}`,
		`{"VNI":4096,"VtepMAC":"D6:51:2E:80:5C:69"}`,
		`{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`,
		`{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`,
		`{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:6"}`,
		`{"VNI":1,"VtepMAC":"zz:51:2e:80:5c:69"}`,
		`{"VNI":1,"VtepMAC":"d6-51-2e-80-5c-69"}`,
		`{"VNI":1, "VtepMAC":"d6:51:2e:80:5c:69"}`,
		`{"VtepMAC":"d6:51:2e:80:5c:69","VNI":1}`,
		`{"vtepmac":"d6:51:2e:80:5c:69"}`,
		`{"VNI":1}`,
		`{}`,
		`null`,
		`{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"`,
		`{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}x`,
		`{"VNI":1,"VtepMAC":"\u0064:51:2e:80:5c:69"}`,
		`{"VNI":1,"VtepMAC":"00:11:22:33:44:55:66:77"}`,
	} {
		got, gotPresent, gotErr := VtepMAC(json.RawMessage(raw))
		want, wantPresent, wantErr := vtepMACSlow(json.RawMessage(raw))
		if !agree(got, gotPresent, gotErr, want, wantPresent, wantErr) {
			t.Errorf("VtepMAC(%s) = %v, %t, %v; encoding/json reads %v, %t, %v", raw, got, gotPresent, gotErr, want, wantPresent, wantErr)
		}
	}
}

// vtepMACSlow is VtepMAC without the fast path.
func vtepMACSlow(raw json.RawMessage) (mac net.HardwareAddr, present bool, err error) {
	var d struct{ VtepMAC *string }
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, false, err
	}
	if d.VtepMAC == nil {
		return nil, false, nil
	}
	// Re-encode canonically so that VtepMAC takes its fast path only when
	// the input was canonical already.
	b, _ := json.Marshal(struct{ VtepMAC string }{*d.VtepMAC})
	m, p, err := VtepMAC(b)
	return m, p, err
}

func FuzzVtepMAC(f *testing.F) {
	f.Add(`{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}`)
	f.Add(`{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:6\""}`)
	f.Fuzz(func(t *testing.T, raw string) {
		got, gotPresent, gotErr := VtepMAC(json.RawMessage(raw))
		want, wantPresent, wantErr := vtepMACSlow(json.RawMessage(raw))
		if !agree(got, gotPresent, gotErr, want, wantPresent, wantErr) {
			t.Fatalf("VtepMAC(%q) = %v, %t, %v; encoding/json reads %v, %t, %v", raw, got, gotPresent, gotErr, want, wantPresent, wantErr)
		}
		// The peer index's non-allocating read claims exactly the valid MACs.
		c, ok := macClaim(claimVtepMAC, []byte(raw))
		if valid := raw != "" && gotPresent && gotErr == nil; ok != valid || (ok && string(c.val[:6]) != string(got)) {
			t.Fatalf("macClaim(%q) = %v, %t; VtepMAC reads %v, %t, %v", raw, c, ok, got, gotPresent, gotErr)
		}
	})
}

// BenchmarkVtepMAC: the canonical form (fast path) against the same data
// with its fields swapped (encoding/json).
func BenchmarkVtepMAC(b *testing.B) {
	for _, c := range []struct{ name, raw string }{
		{"canonical", `{"VNI":1,"VtepMAC":"d6:51:2e:80:5c:69"}`},
		{"json", `{"VtepMAC":"d6:51:2e:80:5c:69","VNI":1}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			raw := json.RawMessage(c.raw)
			for b.Loop() {
				if _, _, err := VtepMAC(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
