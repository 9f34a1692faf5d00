// Package migratev2 moves a flannel network from etcd's v2 store to its v3
// store (weftctl migrate-v2).
//
// flannel up to 0.13 kept <prefix>/config and its leases
// <prefix>/subnets/<a.b.c.d-NN> in etcd's v2 store, each lease a key with a
// TTL and a reservation a key without one. weft, like flannel since 0.14,
// reads v3 only, where the two stores are separate: without a migration a
// host moving to weft finds no config and no lease, and takes a new subnet.
// The migration copies the config and every lease under the same key, each
// lease attached to an etcd v3 lease with the TTL the v2 key has left, so
// that every host finds its own subnet and the expiries stay what they were.
//
// The v3 Go client has no v2 API and go.etcd.io/etcd/client/v2 pins
// client/pkg at v3.5, below ours: v2 is read here with net/http, which is
// all it takes (one recursive GET of plain JSON).
package migratev2

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrNoV2Data: nothing under the prefix in the v2 store (a wrong prefix, or
// a network that never lived in v2).
var ErrNoV2Data = errors.New("no key under the prefix in etcd's v2 store")

// maxV2Body bounds the v2 answer read into memory: 5,000 leases of ~200
// bytes in v2's JSON are ~2 MiB.
const maxV2Body = 64 << 20

// Node is one v2 key (or directory) under the prefix.
type Node struct {
	Key   string
	Value string
	Dir   bool
	// TTL is the seconds the key had left when etcd answered, as etcd
	// computes it (no clock skew between us and etcd enters it); 0 for a
	// key without TTL.
	TTL int64
	// Expires: the key has a TTL (an expiration), even when TTL has come
	// down to 0 or below while etcd had not yet removed it.
	Expires bool
}

// V2Client reads etcd's v2 keys API over HTTP(S).
type V2Client struct {
	Endpoints []string
	// Username and Password go as HTTP basic auth, as v2 expects, when
	// Username is set.
	Username, Password string
	HTTP               *http.Client
	tls                bool
}

// NewV2Client reads from endpoints (the -etcd-endpoints, which etcd 3.4
// serves v2 and v3 on alike), with the client TLS config (nil: none).
func NewV2Client(endpoints []string, tlsCfg *tls.Config, user, password string) *V2Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	tr.Proxy = nil // etcd is reached directly, as the v3 client does
	return &V2Client{
		Endpoints: endpoints, Username: user, Password: password, tls: tlsCfg != nil,
		HTTP: &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}
}

// v2Answer is the JSON of GET /v2/keys: a node tree, or an error.
type v2Answer struct {
	Node      *v2Node `json:"node"`
	ErrorCode int     `json:"errorCode"`
	Message   string  `json:"message"`
	Cause     string  `json:"cause"`
}

type v2Node struct {
	Key   string `json:"key"`
	Value string `json:"value"`
	Dir   bool   `json:"dir"`
	TTL   int64  `json:"ttl"`
	// Expiration is set for keys with a TTL only.
	Expiration *string   `json:"expiration"`
	Nodes      []*v2Node `json:"nodes"`
}

// List returns every key under prefix (recursively, directories included,
// sorted by key) from the first endpoint that answers. A prefix with
// nothing under it is ErrNoV2Data.
func (c *V2Client) List(ctx context.Context, prefix string) ([]Node, error) {
	prefix = "/" + strings.Trim(prefix, "/")
	var errs []error
	for _, ep := range c.Endpoints {
		nodes, err := c.list(ctx, ep, prefix)
		if err == nil || errors.Is(err, ErrNoV2Data) {
			return nodes, err
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("etcd v2: no endpoint given")
	}
	return nil, errors.Join(errs...)
}

func (c *V2Client) list(ctx context.Context, ep, prefix string) ([]Node, error) {
	base := ep
	if !strings.Contains(base, "://") {
		// A bare host:port, as flanneld accepts: https when TLS is set up.
		base = map[bool]string{false: "http://", true: "https://"}[c.tls] + base
	}
	u, err := url.Parse(strings.TrimRight(base, "/") + "/v2/keys" + prefix)
	if err != nil {
		return nil, fmt.Errorf("etcd v2 endpoint %q: %w", ep, err)
	}
	u.RawQuery = url.Values{"recursive": {"true"}, "sorted": {"true"}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("etcd v2 endpoint %q: %w", ep, err)
	}
	if c.Username != "" {
		req.SetBasicAuth(c.Username, c.Password)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("etcd v2 GET %s: %w", u.Redacted(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxV2Body+1))
	if err != nil {
		return nil, fmt.Errorf("etcd v2 GET %s: reading the answer: %w", u.Redacted(), err)
	}
	if len(body) > maxV2Body {
		return nil, fmt.Errorf("etcd v2 GET %s: answer larger than %d MiB", u.Redacted(), maxV2Body>>20)
	}
	var a v2Answer
	jerr := json.Unmarshal(body, &a)
	switch {
	case resp.StatusCode == http.StatusNotFound && jerr == nil && a.ErrorCode == 100:
		return nil, fmt.Errorf("%s at %s: %w", prefix, ep, ErrNoV2Data)
	case resp.StatusCode == http.StatusNotFound && (jerr != nil || a.ErrorCode == 0):
		// etcd 3.4 answers /v2/ with a plain "404 page not found" unless
		// started with --enable-v2; etcd 3.6 has no v2 store at all.
		return nil, fmt.Errorf("etcd v2 GET %s: %s: etcd does not serve the v2 API (etcd 3.4/3.5 serve it only with --enable-v2)", u.Redacted(), resp.Status)
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, fmt.Errorf("etcd v2 GET %s: %s: the v2 store needs -etcd-username and a password allowed to read %s", u.Redacted(), resp.Status, prefix)
	case jerr != nil:
		return nil, fmt.Errorf("etcd v2 GET %s: %s: not a v2 keys answer: %v", u.Redacted(), resp.Status, jerr)
	case a.ErrorCode != 0:
		return nil, fmt.Errorf("etcd v2 GET %s: error %d: %s (%s)", u.Redacted(), a.ErrorCode, a.Message, a.Cause)
	case resp.StatusCode != http.StatusOK || a.Node == nil:
		return nil, fmt.Errorf("etcd v2 GET %s: %s without a node", u.Redacted(), resp.Status)
	}
	var out []Node
	var walk func(n *v2Node)
	walk = func(n *v2Node) {
		out = append(out, Node{Key: n.Key, Value: n.Value, Dir: n.Dir, TTL: n.TTL, Expires: n.Expiration != nil})
		for _, c := range n.Nodes {
			walk(c)
		}
	}
	walk(a.Node)
	return out, nil
}
