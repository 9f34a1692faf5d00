package migratev2

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lease"
)

// Action is what the migration did, or would do, with one item.
type Action string

const (
	// ActionWrite: the key is not in v3; it is written (--apply) or would be.
	ActionWrite Action = "write"
	// ActionPresent: v3 already holds the key with this value (an earlier
	// run): nothing to write.
	ActionPresent Action = "present"
	// ActionSameHost: v3 holds the lease key with another value naming the
	// same PublicIP — the host already runs weft, which rewrote its lease:
	// nothing to write.
	ActionSameHost Action = "same-host"
	// ActionConflict: v3 holds something else; it is never overwritten.
	ActionConflict Action = "conflict"
	// ActionExpired: the TTL ran out between the v2 read and the write.
	ActionExpired Action = "expired"
	// ActionFailed: etcd refused the write.
	ActionFailed Action = "failed"
)

// Result is the outcome for one item.
type Result struct {
	Item   Item
	Action Action
	// TTL is the etcd lease TTL written (or that would be), in seconds:
	// what the v2 key had left when it was read, less the time since.
	TTL int64
	// Detail says why for present, same-host, conflict, expired, failed.
	Detail string
	// Written: the key was written by this run (Action is ActionWrite and
	// the run applied).
	Written bool
}

// Migrate compares the plan with v3 and, when apply is set, writes each
// missing key in its own transaction that creates it only if it is still
// absent (CreateRevision == 0), attached to a fresh etcd lease carrying the
// TTL the v2 key has left. Keys already in v3 are never overwritten: the
// same value is reported as present, another as a conflict. Without apply
// nothing is written (and no etcd lease granted).
func Migrate(ctx context.Context, cli *clientv3.Client, plan Plan, apply bool) ([]Result, error) {
	existing, err := readV3(ctx, cli, plan.Prefix)
	if err != nil {
		return nil, err
	}
	// Which lease key each PublicIP already holds in v3: a host that moved
	// to weft before the migration took a subnet there, and a second lease
	// naming it would be a duplicate every weft host refuses.
	byIP := map[netip.Addr]string{}
	for key, kv := range existing {
		if !strings.HasPrefix(key, plan.Prefix+"/subnets/") {
			continue
		}
		if a, err := lease.ParseAttrs(kv.Value); err == nil {
			byIP[a.PublicIP] = key
		}
	}
	results := make([]Result, 0, len(plan.Items))
	for _, it := range plan.Items {
		r := Result{Item: it, Action: ActionWrite}
		if it.Kind == KindLease {
			r.TTL = remaining(it, plan.Read, time.Now())
		}
		switch kv := existing[it.Key]; {
		case kv != nil:
			r.Action, r.Detail = compare(it, kv)
		case it.Kind != KindConfig && byIP[it.PublicIP] != "":
			r.Action = ActionConflict
			r.Detail = fmt.Sprintf("v3 already has %s for PublicIP %s: that host has a subnet in v3", byIP[it.PublicIP], it.PublicIP)
		case it.Kind == KindLease && r.TTL <= 0:
			r.Action, r.Detail = ActionExpired, fmt.Sprintf("the v2 TTL of %ds ran out since the v2 store was read", it.TTL)
		case apply:
			r = write(ctx, cli, r, plan.Read)
		}
		if r.Action == ActionWrite && it.Kind != KindConfig {
			byIP[it.PublicIP] = it.Key
		}
		results = append(results, r)
	}
	return results, nil
}

// remaining is the TTL the item has left at now, rounded down: the v3
// lease must not outlive the v2 key.
func remaining(it Item, read, now time.Time) int64 {
	return it.TTL - int64((now.Sub(read)+time.Second-1)/time.Second)
}

// readV3 returns the v3 keys under prefix/ with one range read.
func readV3(ctx context.Context, cli *clientv3.Client, prefix string) (map[string]*mvccpb.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read v3 keys under %s/: %w", prefix, err)
	}
	m := make(map[string]*mvccpb.KeyValue, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = kv
	}
	return m, nil
}

// compare says what a v3 key already there means for the item.
func compare(it Item, kv *mvccpb.KeyValue) (Action, string) {
	same := string(kv.Value) == it.Value
	if it.Kind == KindConfig && !same {
		// The config is JSON an operator wrote by hand: spacing is not a
		// difference.
		same = compactJSON(kv.Value) != "" && compactJSON(kv.Value) == compactJSON([]byte(it.Value))
	}
	switch {
	case same && it.Kind == KindLease && kv.Lease == 0:
		return ActionConflict, "v3 holds the same value as a reservation (no etcd lease), v2 as a lease with a TTL"
	case same && it.Kind != KindLease && kv.Lease != 0:
		return ActionConflict, fmt.Sprintf("v3 holds the same value with etcd lease %x, v2 without a TTL", kv.Lease)
	case same:
		return ActionPresent, "already in v3 with this value"
	case it.Kind != KindConfig:
		if a, err := lease.ParseAttrs(kv.Value); err == nil && a.PublicIP == it.PublicIP {
			return ActionSameHost, fmt.Sprintf("v3 holds it for the same host (PublicIP %s), with another value: kept", it.PublicIP)
		}
	}
	return ActionConflict, "v3 holds another value: " + string(kv.Value)
}

func compactJSON(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return ""
	}
	return buf.String()
}

// write creates the key if still absent, in one transaction; a lease gets a
// fresh etcd lease with the remaining TTL, revoked again when the key turns
// out to exist (someone wrote it since the read).
func write(ctx context.Context, cli *clientv3.Client, r Result, read time.Time) Result {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var opts []clientv3.OpOption
	var id clientv3.LeaseID
	if r.Item.Kind == KindLease {
		// Counted again just before the grant: the v3 lease must not
		// outlive the v2 key.
		if r.TTL = remaining(r.Item, read, time.Now()); r.TTL <= 0 {
			r.Action, r.Detail = ActionExpired, fmt.Sprintf("the v2 TTL of %ds ran out since the v2 store was read", r.Item.TTL)
			return r
		}
		g, err := cli.Grant(ctx, r.TTL)
		if err != nil {
			r.Action, r.Detail = ActionFailed, fmt.Sprintf("grant an etcd lease of %ds: %v", r.TTL, err)
			return r
		}
		id = g.ID
		opts = append(opts, clientv3.WithLease(id))
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.Item.Key), "=", 0)).
		Then(clientv3.OpPut(r.Item.Key, r.Item.Value, opts...)).
		Else(clientv3.OpGet(r.Item.Key)).
		Commit()
	if err == nil && resp.Succeeded {
		r.Written = true
		return r
	}
	if id != 0 {
		// Nothing is attached to it; left alone it would only expire.
		if _, rerr := cli.Revoke(ctx, id); rerr != nil && err == nil {
			err = fmt.Errorf("revoke unused etcd lease %x: %w", id, rerr)
		}
	}
	if err != nil {
		r.Action, r.Detail = ActionFailed, fmt.Sprintf("create %s: %v", r.Item.Key, err)
		return r
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		r.Action, r.Detail = compare(r.Item, kvs[0])
		return r
	}
	r.Action, r.Detail = ActionFailed, fmt.Sprintf("create %s: the key existed, then was gone", r.Item.Key)
	return r
}
