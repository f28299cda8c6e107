package gridkv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/gridkv/gridkv/fsm"
)

// Range handoff drivers: the leaders that propose the handoff commands of
// fsm (fsm/handoff.go) and the admin requests between the two groups, after
// the handoff design (docs/replica-groups.md). The source group S decides:
//
//  1. MoveRange asks S's leader (reqMoveRange), which logs Freeze(r,e,T).
//  2. S's leader asks T's record (reqRangeRecord, any T replica); below h it
//     sends Prepare (reqHandoffPrep) and T's leader logs Incoming(h).
//  3. T's leader pulls Export pages (reqExport) from an S replica, its own
//     node's if it has one, and logs each as a Chunk; the last one seals.
//  4. S's leader sees T Sealed(h) and logs Release (the commit point), then
//     pushes Activate (reqActivate) until T shows Owned(h+1). T's leader
//     also activates by itself once an S replica shows Gone(h+1,T).
//  5. Otherwise S's leader logs Unfreeze: T refused (Absent at h), or the
//     handoff outlived the handoff timeout since Freeze. T's leader aborts
//     an Incoming older than the timeout, and an Incoming or Sealed range
//     once S shows the epoch passed without Gone(h+1,T).
//
// Nothing is kept outside the two state machines but a cache of what was
// confirmed: each pass re-drives every range from its record, so a new
// leader on either side resumes where the old one stopped, and a lost
// Apply result only means the record is read again. Every step is
// idempotent (fsm answers a duplicate with nil or ErrPrecondition).
//
// A move is decided by MoveRange (a test power), or by the rebalancer once
// the group count grew (grow.go): each starts the same way, a Freeze
// logged by the source's leader (startMove).

// chunkBytes is the keys plus values of one Chunk (an Export page). Each
// request or Apply of a driver is bounded by Timing.RequestTimeout.
const chunkBytes = 1 << 20

// handoffState is a replica's driver state, touched only by the node's
// handoff loop.
type handoffState struct {
	// activated[r] is the Gone epoch of range r whose target was seen
	// Owned (or past it): nothing left to push.
	activated map[int]uint64
}

// kickHandoffs wakes the handoff loop.
func (db *DB) kickHandoffs() {
	select {
	case db.handoffKick <- struct{}{}:
	default:
	}
}

// handoffLoop drives, on this node, the handoffs of the groups it leads.
func (db *DB) handoffLoop() {
	t := time.NewTicker(db.cfg.Timing.HandoffPoll)
	defer t.Stop()
	for {
		select {
		case <-db.stop:
			return
		case <-t.C:
		case <-db.handoffKick:
		}
		var led []*replica
		for _, rep := range db.replicaList() {
			if rep.group.IsLeader() {
				db.driveGroup(rep)
				led = append(led, rep)
			}
		}
		db.rebalance(led)
	}
}

// driveGroup takes one step, or as many as it can, in every handoff of the
// group rep leads.
func (db *DB) driveGroup(rep *replica) {
	frozen := rep.fsm.RangesIn(fsm.Frozen)
	incoming := rep.fsm.RangesIn(fsm.Incoming)
	sealed := rep.fsm.RangesIn(fsm.Sealed)
	var gone []int
	for _, r := range rep.fsm.RangesIn(fsm.Gone) {
		if rep.handoff.activated[r] != rep.fsm.Range(r).Epoch {
			gone = append(gone, r)
		}
	}
	if len(frozen)+len(incoming)+len(sealed)+len(gone) == 0 {
		return
	}
	// The term barrier: act on records that include everything earlier
	// leaders committed.
	ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.RequestTimeout)
	idx, err := rep.group.ReadIndex(ctx)
	if err == nil {
		err = rep.fsm.WaitApplied(ctx, rep.group.FSMIndex(idx))
	}
	cancel()
	if err != nil {
		return
	}
	for _, r := range frozen {
		db.driveSource(rep, r)
	}
	for _, r := range gone {
		db.pushActivate(rep, r)
	}
	for _, r := range incoming {
		db.driveIncoming(rep, r)
	}
	for _, r := range sealed {
		db.driveSealed(rep, r)
	}
}

// expired reports whether a handoff state that began at since (unix
// nanoseconds, the entry's AppendedAt) is older than the handoff timeout.
func (db *DB) expired(since int64) bool {
	return time.Since(time.Unix(0, since)) > time.Duration(db.handoffTimeout.Load())
}

// applyHandoff logs one handoff command in rep's group and returns the
// range's record after it (read again from the state when the result was
// lost: the command may or may not have applied).
func (db *DB) applyHandoff(rep *replica, r int, cmd []byte) (fsm.RangeRecord, error) {
	ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.RequestTimeout)
	defer cancel()
	resp, err := rep.group.Apply(ctx, cmd)
	if err != nil {
		return rep.fsm.Range(r), err
	}
	res, ok := resp.(*fsm.Result)
	switch {
	case !ok:
		return rep.fsm.Range(r), fmt.Errorf("gridkv: handoff command answered %T", resp)
	case res.Err != nil && !errors.Is(res.Err, fsm.ErrPrecondition) && !errors.Is(res.Err, fsm.ErrCopyMismatch):
		return rep.fsm.Range(r), res.Err
	case res.Record == nil:
		return rep.fsm.Range(r), nil
	}
	return *res.Record, nil
}

// driveSource is S's leader's step for range r, Frozen here.
func (db *DB) driveSource(rep *replica, r int) {
	rec := rep.fsm.Range(r)
	if rec.State != fsm.Frozen {
		return
	}
	h, target := rec.Epoch, rec.Peer
	unfreeze := func(why string) {
		if _, err := db.applyHandoff(rep, r, fsm.AppendUnfreeze(nil, r, h)); err == nil {
			db.log.Info("range handoff rolled back", "range", r, "from", rep.id, "to", target, "epoch", h, "why", why)
		}
	}
	tr, err := db.groupRecord(target, r)
	switch {
	case err != nil:
		if db.expired(rec.Since) {
			unfreeze("target unreachable: " + oneLine(err.Error()))
		}
	case tr.State == fsm.Sealed && tr.Epoch == h:
		if next, err := db.applyHandoff(rep, r, fsm.AppendRelease(nil, r, h)); err == nil && next.State == fsm.Gone {
			db.pushActivate(rep, r)
		}
	case tr.State == fsm.Incoming && tr.Epoch == h:
		if db.expired(rec.Since) {
			unfreeze("copy not done in time")
		}
	case tr.Epoch >= h:
		unfreeze(fmt.Sprintf("target refused: %s at epoch %d", tr.State, tr.Epoch))
	case db.expired(rec.Since):
		unfreeze("target not prepared in time")
	default:
		body := binary.AppendUvarint(nil, uint64(r))
		body = binary.AppendUvarint(body, h)
		body = binary.AppendUvarint(body, uint64(rep.id))
		body = binary.AppendVarint(body, rec.Count)
		body = binary.AppendVarint(body, rec.Bytes)
		ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.RequestTimeout)
		ans, err := db.route(ctx, target, -1, reqHandoffPrep, body, false)
		cancel()
		if err == nil {
			if tr, ok := decodeRecord(ans); ok && tr.Epoch >= h && tr.State != fsm.Incoming && tr.State != fsm.Sealed {
				unfreeze(fmt.Sprintf("target refused: %s at epoch %d", tr.State, tr.Epoch))
			}
		}
	}
}

// pushActivate is S's leader's step for range r, Gone here: until the
// target shows Owned at the Gone epoch (or later), it asks the target's
// leader to activate.
func (db *DB) pushActivate(rep *replica, r int) {
	rec := rep.fsm.Range(r)
	if rec.State != fsm.Gone {
		return
	}
	tr, err := db.groupRecord(rec.Peer, r)
	switch {
	case err != nil:
		return
	case tr.Epoch >= rec.Epoch:
		if rep.handoff.activated == nil {
			rep.handoff.activated = map[int]uint64{}
		}
		rep.handoff.activated[r] = rec.Epoch
		return
	case tr.State != fsm.Sealed || tr.Epoch != rec.Epoch-1:
		return // a replica that lags: ask again next pass
	}
	body := binary.AppendUvarint(nil, uint64(r))
	body = binary.AppendUvarint(body, rec.Epoch-1)
	ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.RequestTimeout)
	defer cancel()
	if ans, err := db.route(ctx, rec.Peer, -1, reqActivate, body, false); err == nil {
		if tr, ok := decodeRecord(ans); ok && tr.Epoch >= rec.Epoch {
			if rep.handoff.activated == nil {
				rep.handoff.activated = map[int]uint64{}
			}
			rep.handoff.activated[r] = rec.Epoch
		}
	}
}

// sourceGaveUp reports whether the source's record src shows the handoff
// at epoch h into group target over without Release: S's epoch passed h
// and it is not Gone(h+1) toward target.
func sourceGaveUp(src fsm.RangeRecord, h uint64, target int) bool {
	released := src.State == fsm.Gone && src.Epoch == h+1 && src.Peer == target
	return src.Epoch >= h+1 && !released
}

// driveIncoming is T's leader's step for range r, Incoming here: abort
// when S gave up or the copy is too old; otherwise pull the rest of the
// copy, page by page, each page a Chunk in T's log.
func (db *DB) driveIncoming(rep *replica, r int) {
	rec := rep.fsm.Range(r)
	if rec.State != fsm.Incoming {
		return
	}
	h, source := rec.Epoch, rec.Peer
	if src, err := db.groupRecord(source, r); err == nil && sourceGaveUp(src, h, rep.id) || db.expired(rec.Since) {
		_, _ = db.applyHandoff(rep, r, fsm.AppendAbort(nil, r, h))
		return
	}
	for rec.State == fsm.Incoming && rec.Epoch == h && !db.isClosed() && rep.group.IsLeader() {
		if hook := db.chunkHook.Load(); hook != nil && !(*hook)(r, rec.Cursor) {
			return
		}
		chunk, err := db.exportPage(source, r, h, rec.Cursor)
		if err != nil {
			return // the next pass tries again
		}
		if rec, err = db.applyHandoff(rep, r, chunk); err != nil {
			return
		}
	}
	if rec.State == fsm.Sealed && rec.Epoch == h {
		db.driveSealed(rep, r)
	}
}

// driveSealed is T's leader's step for range r, Sealed here: Activate once
// an S replica shows Gone(h+1) toward this group, Abort once S shows it
// gave up.
func (db *DB) driveSealed(rep *replica, r int) {
	rec := rep.fsm.Range(r)
	if rec.State != fsm.Sealed {
		return
	}
	src, err := db.groupRecord(rec.Peer, r)
	switch {
	case err != nil:
	case src.State == fsm.Gone && src.Epoch == rec.Epoch+1 && src.Peer == rep.id:
		_, _ = db.applyHandoff(rep, r, fsm.AppendActivate(nil, r, rec.Epoch))
	case sourceGaveUp(src, rec.Epoch, rep.id):
		_, _ = db.applyHandoff(rep, r, fsm.AppendAbort(nil, r, rec.Epoch))
	}
}

// groupRecord is group g's record of range r, as a replica of g answers it
// (this node's own, if it has one): applied there, so committed.
func (db *DB) groupRecord(g, r int) (fsm.RangeRecord, error) {
	if rep := db.currentReplica(g); rep != nil {
		return rep.fsm.Range(r), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.RequestTimeout)
	defer cancel()
	ans, err := db.route(ctx, g, -1, reqRangeRecord, binary.AppendUvarint(nil, uint64(r)), false)
	if err != nil {
		return fsm.RangeRecord{}, err
	}
	rec, ok := decodeRecord(ans)
	if !ok {
		return fsm.RangeRecord{}, errBadMessage
	}
	return rec, nil
}

// exportPage is the Chunk command carrying the page of range r, Frozen at
// h in group source, that follows key after: built by this node's replica
// of source if it shows Frozen(h), else by a replica that does.
func (db *DB) exportPage(source, r int, h uint64, after string) ([]byte, error) {
	if rep := db.currentReplica(source); rep != nil {
		if rec := rep.fsm.Range(r); rec.State == fsm.Frozen && rec.Epoch == h {
			return exportChunk(rep.fsm, r, h, after)
		}
	}
	body := binary.AppendUvarint(nil, uint64(r))
	body = binary.AppendUvarint(body, h)
	body = append(body, after...)
	ctx, cancel := context.WithTimeout(context.Background(), db.cfg.Timing.RequestTimeout)
	defer cancel()
	// To the source's leader: a follower may not have applied the Freeze.
	return db.route(ctx, source, -1, reqExport, body, false)
}

// exportChunk builds, from f, the Chunk command of range r's page after
// key after at epoch h; the last page carries the range's tally.
func exportChunk(f *fsm.FSM, r int, h uint64, after string) ([]byte, error) {
	entries, last, err := f.Export(r, h, after, chunkBytes)
	if err != nil {
		return nil, err
	}
	var trailer fsm.Tally
	if last {
		trailer = f.RangeTally(r)
	}
	cmd := fsm.AppendChunk(nil, r, h, after, entries, last, trailer)
	// Release may have dropped the range meanwhile (then the target no
	// longer needs pages): never hand out a page of another state.
	if rec := f.Range(r); rec.State != fsm.Frozen || rec.Epoch != h {
		return nil, fsm.ErrPrecondition
	}
	return cmd, nil
}

// serveHandoff answers the handoff requests kind (reqRangeRecord and
// reqExport from any replica, the others from the leader) for group rep.
func (db *DB) serveHandoff(ctx context.Context, rep *replica, kind byte, body []byte) []byte {
	r64, n := binary.Uvarint(body)
	if n <= 0 || r64 >= uint64(db.cfg.Ranges) {
		return append([]byte{stInvalid}, "bad range"...)
	}
	r, body := int(r64), body[n:]
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(body)
		if n <= 0 {
			return 0, false
		}
		body = body[n:]
		return v, true
	}
	switch kind {
	case reqRangeRecord:
		return appendRecord([]byte{stOK}, rep.fsm.Range(r))
	case reqExport:
		h, ok := next()
		if !ok {
			return []byte{stInvalid}
		}
		cmd, err := exportChunk(rep.fsm, r, h, string(body))
		if err != nil {
			return append([]byte{stUnavailable}, fmt.Sprintf("export of range %d at epoch %d: %v", r, h, err)...)
		}
		return append([]byte{stOK}, cmd...)
	case reqHandoffPrep:
		h, ok1 := next()
		source, ok2 := next()
		count, k1 := binary.Varint(body)
		if k1 <= 0 || !ok1 || !ok2 {
			return []byte{stInvalid}
		}
		size, k2 := binary.Varint(body[k1:])
		if k2 <= 0 {
			return []byte{stInvalid}
		}
		rec, err := db.applyHandoff(rep, r, fsm.AppendIncoming(nil, r, h, int(source), count, size))
		if err != nil {
			return redirectOrUnavailable(rep, err)
		}
		db.kickHandoffs() // start pulling
		return appendRecord([]byte{stOK}, rec)
	case reqActivate:
		h, ok := next()
		if !ok {
			return []byte{stInvalid}
		}
		// Only S's leader pushes, once Release applied there.
		rec, err := db.applyHandoff(rep, r, fsm.AppendActivate(nil, r, h))
		if err != nil {
			return redirectOrUnavailable(rep, err)
		}
		return appendRecord([]byte{stOK}, rec)
	case reqMoveRange:
		to, ok := next()
		if !ok || to >= uint64(db.groupCount()) {
			return append([]byte{stInvalid}, "bad target group"...)
		}
		return db.startMove(ctx, rep, r, int(to))
	}
	return []byte{stInvalid}
}

// startMove logs Freeze(r, e, to) in group rep, which this node leads, if
// it owns range r at e: the decision to move r. The answer is stOK with
// the Frozen record, or where r is (see refuse).
func (db *DB) startMove(ctx context.Context, rep *replica, r, to int) []byte {
	if err := db.ensureGenesis(ctx, rep); err != nil {
		return redirectOrUnavailable(rep, err)
	}
	rec := rep.fsm.Range(r)
	if rec.State == fsm.Owned && to == rep.id {
		return appendRecord([]byte{stOK}, rec) // already there
	}
	if ref := refuse(rec, r, rep.id, db.lay.Load().genesis(r), true, false); ref.ans != nil {
		return ref.ans
	}
	next, err := db.applyHandoff(rep, r, fsm.AppendFreeze(nil, r, rec.Epoch, to))
	switch {
	case err != nil:
		return redirectOrUnavailable(rep, err)
	case next.State != fsm.Frozen || next.Peer != to:
		return []byte{stMoving} // another handoff or write raced: try again
	}
	db.kickHandoffs()
	return appendRecord([]byte{stOK}, next)
}

// moveRange moves range r to group to and waits for the outcome: nil once
// to owns r, an ErrUnavailable when the source took it back.
func (db *DB) moveRange(ctx context.Context, r, to int) error {
	if r < 0 || r >= db.cfg.Ranges || to < 0 || to >= db.groupCount() {
		return fmt.Errorf("%w: range %d to group %d (%d ranges, %d groups)", ErrInvalid, r, to, db.cfg.Ranges, db.groupCount())
	}
	body := binary.AppendUvarint(nil, uint64(r))
	body = binary.AppendUvarint(body, uint64(to))
	g, _ := db.lay.Load().routes.lookup(r)
	ans, err := db.route(ctx, g, r, reqMoveRange, body, false)
	if err != nil {
		return err
	}
	frozen, ok := decodeRecord(ans)
	if !ok {
		return errBadMessage
	}
	if frozen.State == fsm.Owned {
		return nil
	}
	from, _ := db.lay.Load().routes.lookup(r)
	h := frozen.Epoch
	backoff := 2 * time.Millisecond
	for {
		if tr, err := db.groupRecord(to, r); err == nil && tr.Epoch >= h+1 && tr.State == fsm.Owned {
			db.lay.Load().routes.learn(r, to, h+1)
			return nil
		}
		if src, err := db.groupRecord(from, r); err == nil && sourceGaveUp(src, h, to) {
			return fmt.Errorf("%w: move of range %d from group %d to %d rolled back (source %s at epoch %d)",
				ErrUnavailable, r, from, to, src.State, src.Epoch)
		}
		if err := pause(ctx, &backoff); err != nil {
			return err
		}
	}
}

// appendRecord encodes rec: state byte, uvarint epoch, peer, varint since,
// count, bytes.
func appendRecord(b []byte, rec fsm.RangeRecord) []byte {
	b = append(b, byte(rec.State))
	b = binary.AppendUvarint(b, rec.Epoch)
	b = binary.AppendUvarint(b, uint64(rec.Peer))
	b = binary.AppendVarint(b, rec.Since)
	b = binary.AppendVarint(b, rec.Count)
	return binary.AppendVarint(b, rec.Bytes)
}

// decodeRecord reads what appendRecord wrote (the handoff fields the
// drivers use; the others stay zero).
func decodeRecord(b []byte) (fsm.RangeRecord, bool) {
	if len(b) < 1 || b[0] > byte(fsm.Sealed) {
		return fsm.RangeRecord{}, false
	}
	rec := fsm.RangeRecord{State: fsm.RangeState(b[0])}
	b = b[1:]
	var vals [2]uint64
	for i := range vals {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return fsm.RangeRecord{}, false
		}
		vals[i], b = v, b[n:]
	}
	var svals [3]int64
	for i := range svals {
		v, n := binary.Varint(b)
		if n <= 0 {
			return fsm.RangeRecord{}, false
		}
		svals[i], b = v, b[n:]
	}
	if len(b) != 0 || vals[1] >= maxGroups {
		return fsm.RangeRecord{}, false
	}
	rec.Epoch, rec.Peer = vals[0], int(vals[1])
	rec.Since, rec.Count, rec.Bytes = svals[0], svals[1], svals[2]
	return rec, true
}

// findRange asks every group for its record of range rng and learns where
// rng lives from the answers (routeHint); it reports whether the routing
// table changed. For a router whose table names a group that no longer
// knows the range (Absent: say a handoff back to it that was aborted).
func (db *DB) findRange(ctx context.Context, rng int) bool {
	changed := false
	for g := range db.groupCount() {
		cctx, cancel := context.WithTimeout(ctx, db.cfg.Timing.RequestTimeout/2)
		ans, err := db.route(cctx, g, -1, reqRangeRecord, binary.AppendUvarint(nil, uint64(rng)), false)
		cancel()
		if err != nil {
			continue
		}
		if rec, ok := decodeRecord(ans); ok {
			if to, epoch, ok := routeHint(rec, g); ok && db.lay.Load().routes.learn(rng, to, epoch) {
				changed = true
			}
		}
	}
	return changed
}
