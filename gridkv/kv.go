package gridkv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/fsm"
	"github.com/gridkv/gridkv/gossip"
	"github.com/gridkv/gridkv/placement"
	"github.com/gridkv/gridkv/raftgroup"
)

func (db *DB) checkKey(key string) error {
	if len(key) == 0 || len(key) > maxKeyBytes {
		return fmt.Errorf("%w: key of %d bytes (1..%d allowed)", ErrInvalid, len(key), maxKeyBytes)
	}
	return nil
}

func (db *DB) checkValue(v []byte) error {
	if len(v) > db.cfg.MaxValueBytes {
		return fmt.Errorf("%w: value of %d bytes (at most %d)", ErrInvalid, len(v), db.cfg.MaxValueBytes)
	}
	return nil
}

// ctxErr is ErrTimeout if ctx has ended: checked before a call does
// anything, so even a write's outcome is known (not applied).
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return timedOut(err, false)
	}
	return nil
}

// Set stores value under key. With WithTTL the key expires that long after
// the write commits.
func (db *DB) Set(ctx context.Context, key string, value []byte, opts ...WriteOption) error {
	start := db.met.start()
	err := db.set(ctx, key, value, opts)
	db.met.done(opSet, pathNone, start, err)
	return err
}

func (db *DB) set(ctx context.Context, key string, value []byte, opts []WriteOption) error {
	if db.isClosed() {
		return ErrClosed
	}
	o, err := writeOpts(opts)
	if err := joinErrors(err, db.checkKey(key), db.checkValue(value)); err != nil {
		return err
	}
	if value == nil {
		value = []byte{}
	}
	rng, g := db.lay.Load().locate(key)
	_, err = db.write(ctx, g, rng, fsm.AppendSet(nil, rng, key, value, o.ttl))
	return err
}

// writeOpts gathers opts: ErrInvalid for a nil option or a TTL <= 0.
func writeOpts(opts []WriteOption) (writeOptions, error) {
	var o writeOptions
	for _, f := range opts {
		if f == nil {
			return o, fmt.Errorf("%w: nil WriteOption", ErrInvalid)
		}
		f(&o)
	}
	if o.ttlSet && o.ttl <= 0 {
		return o, fmt.Errorf("%w: TTL %v must be > 0", ErrInvalid, o.ttl)
	}
	return o, nil
}

// Delete removes key; deleting an absent key succeeds.
func (db *DB) Delete(ctx context.Context, key string) error {
	start := db.met.start()
	err := db.deleteKey(ctx, key)
	db.met.done(opDelete, pathNone, start, err)
	return err
}

func (db *DB) deleteKey(ctx context.Context, key string) error {
	if db.isClosed() {
		return ErrClosed
	}
	if err := db.checkKey(key); err != nil {
		return err
	}
	rng, g := db.lay.Load().locate(key)
	_, err := db.write(ctx, g, rng, fsm.AppendDelete(nil, rng, key))
	return err
}

// CompareAndSwap sets key to new if its current value equals old; old ==
// nil means "only if key is absent" (or expired) and []byte{} "present
// with an empty value". It reports whether the swap happened. With
// WithTTL the new value expires that long after the swap commits, in the
// same command: a lock taken this way expires even if its holder dies
// right after. Without it the new value never expires (a TTL the old
// value had is gone too).
func (db *DB) CompareAndSwap(ctx context.Context, key string, old, new []byte, opts ...WriteOption) (bool, error) {
	start := db.met.start()
	swapped, err := db.compareAndSwap(ctx, key, old, new, opts)
	db.met.done(opCAS, pathNone, start, err)
	return swapped, err
}

func (db *DB) compareAndSwap(ctx context.Context, key string, old, new []byte, opts []WriteOption) (bool, error) {
	if db.isClosed() {
		return false, ErrClosed
	}
	o, err := writeOpts(opts)
	if err := joinErrors(err, db.checkKey(key), db.checkValue(new)); err != nil {
		return false, err
	}
	if new == nil {
		new = []byte{}
	}
	swapped, _, err := db.writeKey(ctx, key, func(rng int) []byte { return fsm.AppendCAS(nil, rng, key, old, new, o.ttl) })
	return swapped, err
}

// CompareVersionAndSwap sets key to new if its current version equals
// version (as GetEntry reads it; see Entry for what a version is), and
// reports whether it swapped. version 0 means "only if key is absent" (or
// expired): a stored key's version is never 0. With WithTTL the new value
// expires that long after the swap commits; without it the new value never
// expires.
//
// Every write of a key gives it a greater version, also after its range
// moved to another replica group, so a version is never seen again on
// that key once replaced: a swap succeeds only if no other write came
// between the read and it, and versions serve as fencing tokens (see
// GetEntry).
func (db *DB) CompareVersionAndSwap(ctx context.Context, key string, version uint64, new []byte, opts ...WriteOption) (bool, error) {
	start := db.met.start()
	swapped, err := db.compareVersionAndSwap(ctx, key, version, new, opts)
	db.met.done(opCVS, pathNone, start, err)
	return swapped, err
}

func (db *DB) compareVersionAndSwap(ctx context.Context, key string, version uint64, new []byte, opts []WriteOption) (bool, error) {
	if db.isClosed() {
		return false, ErrClosed
	}
	o, err := writeOpts(opts)
	if err := joinErrors(err, db.checkKey(key), db.checkValue(new)); err != nil {
		return false, err
	}
	swapped, _, err := db.writeKey(ctx, key, func(rng int) []byte { return fsm.AppendCVS(nil, rng, key, version, new, o.ttl) })
	return swapped, err
}

// CompareAndDelete deletes key if its current value equals old (and it
// has not expired): release a lock only if this caller still holds it.
// It reports whether it deleted. old == nil matches an empty value.
func (db *DB) CompareAndDelete(ctx context.Context, key string, old []byte) (bool, error) {
	start := db.met.start()
	deleted, err := db.compareAndDelete(ctx, key, old)
	db.met.done(opCAD, pathNone, start, err)
	return deleted, err
}

func (db *DB) compareAndDelete(ctx context.Context, key string, old []byte) (bool, error) {
	if db.isClosed() {
		return false, ErrClosed
	}
	if err := joinErrors(db.checkKey(key), db.checkValue(old)); err != nil {
		return false, err
	}
	deleted, _, err := db.writeKey(ctx, key, func(rng int) []byte { return fsm.AppendCAD(nil, rng, key, old) })
	return deleted, err
}

// Incr adds delta to the decimal int64 stored at key and returns the sum,
// stored in decimal ("42"). An absent or expired key counts as 0; the key
// keeps its TTL, if it has one. A value that is not a decimal int64, or a
// sum that would overflow int64, gives ErrInvalid and changes nothing. It
// is one command: concurrent Incrs never lose an update.
func (db *DB) Incr(ctx context.Context, key string, delta int64) (int64, error) {
	start := db.met.start()
	sum, err := db.incr(ctx, key, delta)
	db.met.done(opIncr, pathNone, start, err)
	return sum, err
}

func (db *DB) incr(ctx context.Context, key string, delta int64) (int64, error) {
	if db.isClosed() {
		return 0, ErrClosed
	}
	if err := db.checkKey(key); err != nil {
		return 0, err
	}
	_, sum, err := db.writeKey(ctx, key, func(rng int) []byte { return fsm.AppendIncr(nil, rng, key, delta) })
	return sum, err
}

// Expire makes an existing key expire ttl (> 0) after the call commits,
// replacing any TTL it had; the value stays. It reports false, changing
// nothing, if the key is absent or expired.
func (db *DB) Expire(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	start := db.met.start()
	found, err := db.expire(ctx, key, ttl)
	db.met.done(opExpire, pathNone, start, err)
	return found, err
}

func (db *DB) expire(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	if db.isClosed() {
		return false, ErrClosed
	}
	if ttl <= 0 {
		return false, fmt.Errorf("%w: TTL %v must be > 0", ErrInvalid, ttl)
	}
	if err := db.checkKey(key); err != nil {
		return false, err
	}
	found, _, err := db.writeKey(ctx, key, func(rng int) []byte { return fsm.AppendExpire(nil, rng, key, ttl) })
	return found, err
}

// writeKey writes the single-operation command cmd encodes for key's
// range, and reads the answer (see writeResult).
func (db *DB) writeKey(ctx context.Context, key string, cmd func(rng int) []byte) (swapped bool, sum int64, err error) {
	rng, g := db.lay.Load().locate(key)
	ans, err := db.write(ctx, g, rng, cmd(rng))
	if err != nil {
		return false, 0, err
	}
	swapped, sum = writeResult(ans)
	return swapped, sum, nil
}

// writeResult reads a write answer's body (after the status byte; see
// writeAnswer): whether it swapped, and an Incr's sum.
func writeResult(ans []byte) (swapped bool, sum int64) {
	_, n := binary.Uvarint(ans)
	if n <= 0 || len(ans) <= n {
		return false, 0
	}
	swapped = ans[n] == 1
	if len(ans) > n+1 {
		sum, _ = binary.Varint(ans[n+1:])
	}
	return swapped, sum
}

// write routes one encoded single-operation command for range rng to
// group g, which this node believes holds it.
func (db *DB) write(ctx context.Context, g, rng int, cmd []byte) ([]byte, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	return db.route(ctx, g, rng, reqWrite, cmd, true)
}

// Get returns key's value: ErrNotFound when absent or expired. Without
// options the read is linearizable: the range's leader serves it from its
// own state under its leader lease (no round trip; see docs/raftgroup.md),
// or, while it holds no valid lease, after a ReadIndex round.
func (db *DB) Get(ctx context.Context, key string, opts ...ReadOption) ([]byte, error) {
	v, _, _, err := db.get(ctx, key, opts)
	return v, err
}

// GetEntry is Get returning the key's Entry: its value, its version and
// when it expires (ExpireAt zero: never). It reads as Get does, with the
// same options, and gives ErrNotFound when the key is absent or expired.
//
// The version names the write that gave the key this value (see Entry's
// godoc): every later write of the key has a greater one, even after its
// range moved to another replica group. So versions of one key serve as
// fencing tokens: each time a lock key is taken (CompareAndSwap from
// absent), its version is greater than every earlier holder's, and a
// resource that remembers the greatest token it has seen can refuse a
// stalled holder's late write (examples/locks). CompareVersionAndSwap
// writes only over the exact version read.
func (db *DB) GetEntry(ctx context.Context, key string, opts ...ReadOption) (Entry, error) {
	v, version, expireAt, err := db.get(ctx, key, opts)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Key: key, Value: v, Version: version}
	if expireAt != 0 {
		e.ExpireAt = time.Unix(0, expireAt)
	}
	return e, nil
}

// get reads key for Get and GetEntry: its value (a copy of its own), its
// version and its expiry (unix nanoseconds; 0: none).
func (db *DB) get(ctx context.Context, key string, opts []ReadOption) (value []byte, version uint64, expireAt int64, err error) {
	start := db.met.start()
	var mode readMode
	value, version, expireAt, err = db.getKey(ctx, key, opts, &mode)
	db.met.done(opGet, pathOf(mode), start, err)
	return value, version, expireAt, err
}

// getKey is get; it sets *mode to the read mode asked for, for metrics.
func (db *DB) getKey(ctx context.Context, key string, opts []ReadOption, mode *readMode) (value []byte, version uint64, expireAt int64, err error) {
	if db.isClosed() {
		return nil, 0, 0, ErrClosed
	}
	if err := db.checkKey(key); err != nil {
		return nil, 0, 0, err
	}
	o, err := db.readOpts(opts)
	*mode = o.mode
	if err != nil {
		return nil, 0, 0, err
	}
	if err := ctxErr(ctx); err != nil {
		return nil, 0, 0, err
	}
	rng, r := db.lay.Load().locate(key)
	if rep := db.currentReplica(r); rep != nil && !db.isClosed() {
		if o.mode == readQuorum {
			ans := db.quorumRead(ctx, rep, r, key, o.quorum)
			if !db.rerouted(ans) {
				value, version, expireAt, err = answerEntry(ans)
				if err != nil && ctx.Err() != nil {
					return nil, 0, 0, timedOut(ctx.Err(), false) // a read: nothing in flight to worry about
				}
				return value, version, expireAt, err
			}
		} else {
			// Served by this node's replica with no round when it can:
			// Stale, a sole voter, or the leader under its lease (waiting,
			// if need be, for its state to apply the commit index).
			ans, ok := db.readNow(rep, o.mode, key)
			if !ok && o.mode == readDefault {
				ans, ok = db.leaseAnswer(ctx, rep, key)
			}
			if ok && !db.rerouted(ans) {
				return answerEntry(ans)
			}
		}
	}
	body := []byte{byte(o.mode)}
	if o.mode == readQuorum {
		body = append(body, byte(o.quorum))
	}
	ans, err := db.route(ctx, r, rng, reqRead, append(body, key...), false)
	if err != nil {
		return nil, 0, 0, err
	}
	if value, version, expireAt, err = decodeEntry(ans); err != nil {
		return nil, 0, 0, err
	}
	return append([]byte{}, value...), version, expireAt, nil // not a slice of a frame that may hold other reads
}

// answerEntry turns a read answer served on this node (status byte first;
// made for this read alone) into get's result. The value is a slice of ans.
func answerEntry(ans []byte) (value []byte, version uint64, expireAt int64, err error) {
	if len(ans) == 0 {
		return nil, 0, 0, errBadMessage
	}
	if ans[0] != stOK {
		return nil, 0, 0, statusError(ans[0], ans[1:])
	}
	return decodeEntry(ans[1:])
}

// decodeEntry reads the body of a read's stOK answer (see entryAnswer):
// uvarint version, varint expiry, then the value, a slice of body.
func decodeEntry(body []byte) (value []byte, version uint64, expireAt int64, err error) {
	version, n := binary.Uvarint(body)
	if n <= 0 {
		return nil, 0, 0, errBadMessage
	}
	expireAt, m := binary.Varint(body[n:])
	if m <= 0 {
		return nil, 0, 0, errBadMessage
	}
	return body[n+m:], version, expireAt, nil
}

// caughtUp waits until rep's state machine has applied commit index idx,
// or ctx ends (false).
func (db *DB) caughtUp(ctx context.Context, rep *replica, idx uint64) bool {
	if rep.fsm.Applied() >= idx {
		return true
	}
	return rep.fsm.WaitApplied(ctx, rep.group.FSMIndex(idx)) == nil
}

// route delivers a request for replica group r to the node that must
// serve it — this one when it can — following redirects until ctx ends. A
// request for a range (rng >= 0; -1: a request for the group itself)
// follows the range: to the group this node's routing table names for it
// (routes.go), which WrongGroup answers and findRange update; a range in
// a handoff (Moving) is retried after a pause.
func (db *DB) route(ctx context.Context, r, rng int, kind byte, body []byte, write bool) ([]byte, error) {
	var req []byte
	var tried peer   // the node the last request went to (zero: served here)
	var avoid string // an address that redirected without naming another leader
	eager := true    // the next redirect to a new leader may skip the pause
	backoff := 2 * time.Millisecond
	for {
		if db.isClosed() {
			return nil, ErrClosed
		}
		if rng >= 0 {
			if g, _ := db.lay.Load().routes.lookup(rng); g != r {
				// The range moved (this request learned it, or another one
				// did): start over at its group.
				r, req, tried, avoid, eager = g, nil, peer{}, "", true
			}
		}
		var ans []byte
		local := db.currentReplica(r)
		if local != nil && db.servesLocally(local, kind, body) {
			tried = peer{}
			ans = db.handle(ctx, kind, r, body)
		} else {
			if local != nil {
				if id, _ := local.group.Leader(); id == "" {
					if err := db.quorumGone(r, local); err != nil {
						return nil, err
					}
				}
			}
			to := db.leaderPeer(r, local, avoid)
			if !to.known() {
				avoid = "" // nobody else to ask: after the pause, anyone
				if err := pause(ctx, &backoff); err != nil {
					return nil, err
				}
				continue
			}
			tried = to
			var resp []byte
			var err error
			// The creation of r this node knows: a replica of an older one
			// does not serve it.
			wg := wireGroup(r, db.lay.Load().gen(r))
			switch kind {
			case reqRead:
				resp, err = db.fwd.read(ctx, to, wg, body) // with other reads bound there
			case reqWrite:
				resp, err = db.fwd.write(ctx, to, wg, body) // with other writes bound there
			default:
				if req == nil {
					req = encodeRequest(kind, wg, body)
				}
				resp, err = db.host.Call(ctx, to.id, to.addr, req)
			}
			switch {
			case err == nil && len(resp) > 0:
				ans = resp
			case err == nil && write:
				return nil, timedOut(fmt.Errorf("empty answer from %s", to.addr), true)
			case err == nil:
				return nil, errBadMessage
			case err != nil && (raftgroup.NotSent(err) || !write):
				// Not delivered (or a read, which is safe to retry).
				db.leaderHint.Delete(r)
				if err := pause(ctx, &backoff); err != nil {
					return nil, err
				}
				continue
			case errors.Is(err, raftgroup.ErrTimeout):
				return nil, timedOut(err, true)
			default:
				return nil, timedOut(fmt.Errorf("connection to %s lost mid-write: %s", to.addr, oneLine(err.Error())), true)
			}
		}
		switch ans[0] {
		case stClosed:
			// The node asked (or this node's replica, dropped) is closing;
			// what it refused was not applied. Ask another; the loop's top
			// says ErrClosed if it is this node that closed.
			db.leaderHint.Delete(r)
			avoid = tried.addr
			if err := pause(ctx, &backoff); err != nil {
				return nil, err
			}
			continue
		case stOK:
			return ans[1:], nil
		case stWrongGroup, stMoving, stNotHere:
			if rng < 0 {
				break
			}
			db.rerouted(ans) // a WrongGroup teaches the table
			if ans[0] == stNotHere {
				db.findRange(ctx, rng)
			}
			if g, _ := db.lay.Load().routes.lookup(rng); g == r {
				if err := pause(ctx, &backoff); err != nil {
					return nil, err
				}
			}
			continue
		case stRedirect:
			hint := decodeRedirect(ans[1:])
			fresh := hint.known() && hint.addr != tried.addr
			if fresh {
				db.leaderHint.Store(r, hint)
				avoid = ""
			} else {
				// A node with no better idea: do not ask it again next. A
				// replica removed from its range can keep naming it as the
				// leader for ever.
				db.leaderHint.Delete(r)
				avoid = tried.addr
			}
			// A new leader to try goes at once, once in a row (two nodes
			// with stale views could bounce a request between them);
			// otherwise wait for the election to settle.
			if !fresh || !eager {
				if err := pause(ctx, &backoff); err != nil {
					return nil, err
				}
				eager = true
			} else {
				eager = false
			}
			continue
		}
		return nil, statusError(ans[0], ans[1:])
	}
}

// servesLocally reports whether this node's replica answers the request
// itself rather than asking the leader.
func (db *DB) servesLocally(rep *replica, kind byte, body []byte) bool {
	if (kind == reqRead || kind == reqScan) && len(body) > 0 && readMode(body[0]) == readStale || kind == reqRangeRecord {
		return true
	}
	return rep.group.IsLeader()
}

// leaderPeer is the best guess of range r's leader, at an address other
// than avoid; the zero peer when there is none.
func (db *DB) leaderPeer(r int, local *replica, avoid string) peer {
	if local != nil {
		if p := leaderOf(local); p.known() && p.addr != avoid {
			return p
		}
	}
	if v, ok := db.leaderHint.Load(r); ok && v.(peer).addr != avoid {
		return v.(peer)
	}
	var members []gossip.Member
	for _, m := range db.members() {
		if !m.Meta.Leaving { // handing its leaderships away (DB.Close)
			members = append(members, m)
		}
	}
	for _, m := range members {
		// Our own claim is stale if raft above did not name us.
		if m.Meta.NodeID != db.cfg.NodeID && m.Meta.RPCAddr != avoid && slices.Contains(m.Meta.Leads, r) {
			return memberPeer(m)
		}
	}
	// Ask the most preferred replica; it redirects if it does not lead.
	ids := make([]string, 0, len(members))
	byID := map[string]peer{}
	for _, m := range members {
		ids = append(ids, m.Meta.NodeID)
		byID[m.Meta.NodeID] = memberPeer(m)
	}
	for _, id := range placement.Replicas(r, ids, db.cfg.ReplicaCount) {
		if id != db.cfg.NodeID && byID[id].addr != avoid {
			return byID[id]
		}
	}
	return peer{}
}

// memberPeer is the incarnation of m that gossip announced.
func memberPeer(m gossip.Member) peer {
	return peer{id: raftgroup.ServerID(m.Meta.NodeID, m.Meta.Incarnation), addr: m.Meta.RPCAddr}
}

// pause waits for the backoff (doubling it up to 100ms) or ctx's end.
func pause(ctx context.Context, backoff *time.Duration) error {
	t := time.NewTimer(*backoff)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return timedOut(ctx.Err(), false) // nothing in flight: pauses follow answers that applied nothing
	case <-t.C:
	}
	*backoff = min(2**backoff, 100*time.Millisecond)
	return nil
}

func uvarint(b []byte) (uint64, int) { return binary.Uvarint(b) }

// quorumGone reports ErrUnavailable when this node's replica of range r
// has no leader and fewer than a majority of the range's voters are live
// members: no leader can be elected until they return (with in-memory
// logs, a majority lost at once means the range's data is lost; see
// README). Nothing was sent, so nothing was applied. majorityGone says
// when this replica's configuration is not to be judged by.
func (db *DB) quorumGone(r int, local *replica) error {
	if local == nil {
		return nil
	}
	servers, err := local.group.Configuration()
	if err != nil {
		return nil
	}
	var leaders []raft.ServerID
	for _, m := range db.members() {
		if m.Meta.NodeID != db.cfg.NodeID && !m.Meta.Leaving && slices.Contains(m.Meta.Leads, r) {
			leaders = append(leaders, memberPeer(m).id)
		}
	}
	if up, voters, gone := majorityGone(db.host.ID(), servers, db.liveServers(false), leaders); gone {
		return fmt.Errorf("%w: replica group %d has %d of %d replicas alive, no majority", ErrUnavailable, r, up, voters)
	}
	return nil
}

// majorityGone decides quorumGone: whether at most half the voters of a
// replica's configuration (servers) are live, as gossip sees the members
// (live, by Raft server id), counting them. The configuration is not
// judged by, and gone is false, when it is stale or not yet the group's:
//   - self, the replica's own server, is not in it: the replica was
//     removed and not dropped yet (orphans.go), or prepared and not added
//     yet (its configuration is what its snapshot or log brought);
//   - a live member that is not a voter in it announces it leads the group
//     (leaders): the group moved on without this replica.
func majorityGone(self raft.ServerID, servers []raft.Server, live map[raft.ServerID]bool, leaders []raft.ServerID) (up, voters int, gone bool) {
	isVoter := func(id raft.ServerID) bool {
		return slices.ContainsFunc(servers, func(s raft.Server) bool { return s.ID == id && s.Suffrage == raft.Voter })
	}
	if !slices.ContainsFunc(servers, func(s raft.Server) bool { return s.ID == self }) {
		return 0, 0, false
	}
	for _, l := range leaders {
		if !isVoter(l) {
			return 0, 0, false
		}
	}
	for _, s := range servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if live[s.ID] {
			up++
		}
	}
	return up, voters, voters > 0 && up <= voters/2
}

// liveServers is the set of Raft server ids of the live members' current
// incarnations, as gossip knows them; with staying, only of those that have
// not announced they are leaving.
func (db *DB) liveServers(staying bool) map[raft.ServerID]bool {
	live := map[raft.ServerID]bool{}
	for _, m := range db.members() {
		if !staying || !m.Meta.Leaving {
			live[raftgroup.ServerID(m.Meta.NodeID, m.Meta.Incarnation)] = true
		}
	}
	return live
}
