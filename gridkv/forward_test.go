package gridkv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/gridkv/gridkv/internal/testutil"
	"github.com/gridkv/gridkv/placement"
	"github.com/gridkv/gridkv/raftgroup"
)

func encodeReadsFor(reads []readReq) []byte {
	b := encodeReads(reqReads, len(reads), 0)
	for _, rd := range reads {
		body := []byte{byte(rd.mode)}
		if rd.mode == readQuorum {
			body = append(body, byte(rd.q))
		}
		b = appendRead(b, wireGroup(rd.r, rd.gen), append(body, rd.key...))
	}
	return b
}

func TestReadsWire(t *testing.T) {
	for _, reads := range [][]readReq{
		{},
		{{r: 0, mode: readDefault, key: "k"}},
		{{r: 3, mode: readStale, key: ""}, {r: 4095, gen: maxWireGen, mode: readQuorum, q: 2, key: strings.Repeat("x", 300)},
			{r: 63, mode: readIndex, key: "\x00\xff"}},
	} {
		req := encodeReadsFor(reads)
		kind, r, _, body, err := decodeRequest(req)
		if err != nil || kind != reqReads || r != 0 {
			t.Fatalf("%v: request header %d %d %v", reads, kind, r, err)
		}
		got, err := decodeReads(body)
		if err != nil || !slices.Equal(got, reads) {
			t.Fatalf("decodeReads = %v, %v; want %v", got, err, reads)
		}
		// Every cut of the body, and any byte added, is refused.
		for i := range body {
			if len(reads) > 0 && i > 0 {
				if _, err := decodeReads(body[:i]); err == nil {
					t.Fatalf("%v: %d of %d bytes decoded", reads, i, len(body))
				}
			}
		}
		if _, err := decodeReads(append(body, 0)); err == nil {
			t.Fatalf("%v: a trailing byte decoded", reads)
		}
	}
	for name, body := range map[string][]byte{
		"empty":              nil,
		"count too large":    {200, 1, 0, 1, 0},
		"empty read body":    {1, 0, 0},
		"creation too large": binary.AppendUvarint([]byte{1}, (maxWireGen+1)<<16),
		"length past body":   {1, 0, 5, 0},
	} {
		if _, err := decodeReads(body); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}

	big := bytes.Repeat([]byte{'v'}, readsFrameBytes/2-1)
	huge := bytes.Repeat([]byte{'v'}, readsFrameBytes+1)
	for _, c := range []struct {
		answers, want [][]byte
	}{
		{nil, nil},
		{[][]byte{{stOK, 1, 0, 'v'}, {stNotFound}, redirect(peer{"n1-1", "a:1"}), {stUnknown, 'x'}},
			[][]byte{{stOK, 1, 0, 'v'}, {stNotFound}, redirect(peer{"n1-1", "a:1"}), {stUnknown, 'x'}}},
		// Past readsFrameBytes, answers are left for another frame; the
		// first always goes, however large.
		{[][]byte{huge, {stNotFound}},
			[][]byte{huge, {stResend}}},
		{[][]byte{big, big, big, {stNotFound}},
			[][]byte{big, big, {stResend}, {stNotFound}}},
	} {
		b := encodeReadAnswers(c.answers)
		got, err := decodeReadAnswers(b, len(c.answers))
		if err != nil || !slices.EqualFunc(got, c.want, bytes.Equal) {
			short := func(answers [][]byte) (s []string) {
				for _, a := range answers {
					s = append(s, fmt.Sprintf("%d bytes from %q", len(a), a[:min(len(a), 8)]))
				}
				return s
			}
			t.Fatalf("decodeReadAnswers = %q, %v; want %q", short(got), err, short(c.want))
		}
		if _, err := decodeReadAnswers(b, len(c.answers)+1); err == nil {
			t.Fatal("an answer for the wrong number of reads decoded")
		}
		if _, err := decodeReadAnswers(b[:len(b)-1], len(c.answers)); len(c.answers) > 0 && err == nil {
			t.Fatal("a cut answer decoded")
		}
	}
	// A single status answers every read.
	if got, err := decodeReadAnswers([]byte{stInvalid, 'x'}, 2); err != nil || len(got) != 2 ||
		string(got[0]) != "\x04x" || string(got[1]) != "\x04x" {
		t.Fatalf("single status: %q, %v", got, err)
	}
}

func FuzzDecodeReads(f *testing.F) {
	f.Add(encodeReadsFor([]readReq{{r: 1, key: "k"}, {r: 2, mode: readStale, key: "kk"}})[2:])
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, body []byte) {
		reads, err := decodeReads(body)
		if err != nil {
			return
		}
		if again := encodeReadsFor(reads)[2:]; !bytes.Equal(again, body) {
			// Uvarints have one canonical form only if minimal; decoding
			// accepts others, so compare what they decode to.
			if back, err := decodeReads(again); err != nil || !slices.Equal(back, reads) {
				t.Fatalf("%v re-encodes to something else", reads)
			}
		}
	})
}

// echoHost is a node whose handler answers each read of a reqReads
// request with stOK, version i (its place in the frame), expiry i, and
// the key; answer, if set, decides instead.
type echoHost struct {
	*raftgroup.Host
	frames chan []readReq // each frame's reads, as it arrives
}

func newEchoHost(t *testing.T, answer func(ctx context.Context, reads []readReq) []byte) *echoHost {
	h, err := raftgroup.NewHost(raftgroup.Config{NodeID: "echo", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	e := &echoHost{Host: h, frames: make(chan []readReq, 1024)}
	h.SetRPCHandler(func(ctx context.Context, req []byte) ([]byte, error) {
		kind, _, _, body, err := decodeRequest(req)
		if err != nil || kind != reqReads {
			return nil, fmt.Errorf("not a reqReads request: %v", err)
		}
		reads, err := decodeReads(body)
		if err != nil {
			return nil, err
		}
		e.frames <- reads
		if answer != nil {
			return answer(ctx, reads), nil
		}
		return echo(reads, nil), nil
	})
	return e
}

// echo answers reads[i] with version i, expiry i and its key, or stResend
// where resend says so.
func echo(reads []readReq, resend func(i int) bool) []byte {
	answers := make([][]byte, len(reads))
	for i, rd := range reads {
		if resend != nil && resend(i) {
			answers[i] = []byte{stResend}
			continue
		}
		ans := binary.AppendUvarint([]byte{stOK}, uint64(i))
		answers[i] = append(binary.AppendVarint(ans, int64(i)), rd.key...)
	}
	return encodeReadAnswers(answers)
}

func (e *echoHost) peer() peer { return peer{id: e.ID(), addr: e.Addr()} }

func newTestForwarder(t *testing.T) (*raftgroup.Host, *forwarder) {
	h, err := raftgroup.NewHost(raftgroup.Config{NodeID: "client", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return h, newForwarder(h)
}

// readAll runs n reads of keys "k<i>" through f at once; it returns each
// one's answer and error.
func readAll(ctx context.Context, f *forwarder, to peer, n int) ([][]byte, []error) {
	answers, errs := make([][]byte, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i], errs[i] = f.read(ctx, to, i%64, []byte("\x00k"+fmt.Sprint(i)))
		}()
	}
	wg.Wait()
	return answers, errs
}

func checkEchoed(t *testing.T, answers [][]byte, errs []error) {
	t.Helper()
	for i, ans := range answers {
		if errs[i] != nil {
			t.Fatalf("read %d: %v", i, errs[i])
		}
		if len(ans) < 2 || ans[0] != stOK {
			t.Fatalf("read %d: answer %q", i, ans)
		}
		if v, _, _, err := answerEntry(ans); err != nil || string(v) != fmt.Sprint("k", i) {
			t.Fatalf("read %d got the answer to %q (%v)", i, v, err)
		}
	}
}

// Reads queued while frames are in flight go together in the next frame,
// each answered with its own answer.
func TestForwarderCoalesces(t *testing.T) {
	release := make(chan struct{})
	server := newEchoHost(t, func(ctx context.Context, reads []readReq) []byte {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return echo(reads, nil)
	})
	defer server.Close()
	client, f := newTestForwarder(t)
	defer func() { client.Close(); f.close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	const n = 300
	var answers [][]byte
	var errs []error
	done := make(chan struct{})
	go func() { defer close(done); answers, errs = readAll(ctx, f, server.peer(), n) }()
	// readFramesInFlight frames wait in the handler; the other reads queue.
	testutil.Eventually(t, 10*time.Second, "the other reads to queue", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		q := f.mu.queues[dest{server.peer(), reqReads}]
		return q != nil && len(q.reads)+int(f.reads.Load()) == n && f.readFrames.Load() == readFramesInFlight
	})
	close(release)
	<-done
	checkEchoed(t, answers, errs)
	// The queued reads fill frames of maxReadsPerFrame.
	if frames, reads := f.readFrames.Load(), f.reads.Load(); reads != n || frames > readFramesInFlight+2 {
		t.Fatalf("%d reads in %d frames", reads, frames)
	}
	testutil.Eventually(t, 10*time.Second, "the idle queue to go", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.mu.queues) == 0
	})
}

// Reads the answer leaves out (stResend: the frame was full) go again,
// first in the next frame.
func TestForwarderResends(t *testing.T) {
	server := newEchoHost(t, func(ctx context.Context, reads []readReq) []byte {
		return echo(reads, func(i int) bool { return i > 0 }) // the first read only
	})
	defer server.Close()
	client, f := newTestForwarder(t)
	defer func() { client.Close(); f.close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	answers, errs := readAll(ctx, f, server.peer(), 50)
	for i, ans := range answers {
		v, version, expireAt, err := answerEntry(ans)
		if errs[i] != nil || err != nil || string(v) != fmt.Sprint("k", i) || version != 0 || expireAt != 0 {
			t.Fatalf("read %d: %q %v: want the first of its frame", i, ans, errs[i])
		}
	}
	if f.readFrames.Load() < 50 {
		t.Fatalf("50 reads, one answered per frame, in %d frames", f.readFrames.Load())
	}
}

// A frame that cannot be delivered fails each of its reads with the
// error a single Call would give (NotSent: route tries again); so does
// the connection's loss mid-frame, and the forwarder's close.
func TestForwarderFailures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	t.Run("unreachable", func(t *testing.T) {
		server := newEchoHost(t, nil)
		gone := server.peer()
		server.Close()
		client, f := newTestForwarder(t)
		defer func() { client.Close(); f.close() }()
		_, errs := readAll(ctx, f, gone, 20)
		for i, err := range errs {
			if !raftgroup.NotSent(err) {
				t.Fatalf("read %d: %v, want a NotSent error", i, err)
			}
		}
	})
	t.Run("peer closes mid-frame", func(t *testing.T) {
		server := newEchoHost(t, func(ctx context.Context, reads []readReq) []byte {
			<-ctx.Done()            // until the server closes
			return []byte{stClosed} // may still get through
		})
		client, f := newTestForwarder(t)
		defer func() { client.Close(); f.close() }()
		go func() { <-server.frames; server.Close() }()
		answers, errs := readAll(ctx, f, server.peer(), 20)
		for i, err := range errs {
			if err == nil && !bytes.Equal(answers[i], []byte{stClosed}) {
				t.Fatalf("read %d: %q", i, answers[i])
			}
		}
	})
	t.Run("closed", func(t *testing.T) {
		server := newEchoHost(t, func(ctx context.Context, reads []readReq) []byte {
			<-ctx.Done()
			return nil
		})
		defer server.Close()
		client, f := newTestForwarder(t)
		results := make(chan error, 20)
		for range 20 {
			go func() { _, err := f.read(ctx, server.peer(), 0, []byte("\x00k")); results <- err }()
		}
		<-server.frames
		client.Close()
		f.close()
		for range 20 {
			if err := <-results; err == nil {
				t.Fatal("a read succeeded")
			}
		}
		if _, err := f.read(ctx, server.peer(), 0, []byte("\x00k")); !errors.Is(err, errForwarderClosed) {
			t.Fatalf("after close: %v", err)
		}
	})
	t.Run("caller's deadline", func(t *testing.T) {
		release := make(chan struct{})
		server := newEchoHost(t, func(ctx context.Context, reads []readReq) []byte {
			<-ctx.Done()
			<-release // no answer before the callers gave up
			return echo(reads, nil)
		})
		defer server.Close()
		defer close(release)
		client, f := newTestForwarder(t)
		defer func() { client.Close(); f.close() }()
		short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancelShort()
		_, errs := readAll(short, f, server.peer(), 20)
		for i, err := range errs {
			if !errors.Is(err, raftgroup.ErrTimeout) {
				t.Fatalf("read %d: %v, want ErrTimeout", i, err)
			}
		}
	})
}

// openCluster starts n nodes from cfg (NodeID, Logger and Seeds set here),
// waits until they are ready, and closes them when the test ends. The
// first node forms the cluster and the others join it, unless
// cfg.BootstrapExpect is n: then the n nodes form it together (with
// GroupsPerNode x n replica groups).
func openCluster(tb testing.TB, n int, cfg Config) []*DB {
	tb.Helper()
	if cfg.BootstrapExpect > 1 {
		return formCluster(tb, n, cfg)
	}
	var nodes []*DB
	for i := range n {
		c := cfg
		c.NodeID, c.Logger = fmt.Sprint("n", i), quiet
		if i > 0 {
			c.Seeds = []string{nodes[0].GossipAddr()}
		}
		db, err := Open(c)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { db.Close() })
		nodes = append(nodes, db)
	}
	waitClusterReady(tb, nodes)
	return nodes
}

// formCluster is openCluster for n nodes that form the cluster together
// (cfg.BootstrapExpect == n), each seeded with the others' gossip ports.
func formCluster(tb testing.TB, n int, cfg Config) []*DB {
	tb.Helper()
	if cfg.BootstrapExpect != n {
		tb.Fatalf("BootstrapExpect %d for %d nodes", cfg.BootstrapExpect, n)
	}
	nodes := testutil.OpenTogether(tb, context.Background(), n, func(ctx context.Context, i int, addrs []string) (*DB, error) {
		c := cfg
		c.NodeID, c.Logger, c.GossipAddr, c.Seeds = fmt.Sprint("n", i), quiet, addrs[i], testutil.Seeds(addrs, i)
		return OpenContext(ctx, c)
	})
	for _, db := range nodes {
		tb.Cleanup(func() { db.Close() })
	}
	waitClusterReady(tb, nodes)
	return nodes
}

// waitClusterReady waits until every node is ready and the cluster has
// grown to GroupsPerNode groups per node with every range settled in its
// group: a cluster formed by joins grows its groups after WaitReady
// returns, and tests want the ranges where they will stay.
func waitClusterReady(tb testing.TB, nodes []*DB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	waitLayoutSettled(tb, nodes, min(nodes[0].cfg.GroupsPerNode*len(nodes), maxGroups), 60*time.Second)
}

// Many concurrent reads on a 3-node cluster, most of them forwarded to
// their range's leader (or, Stale, to a replica): every one gets its
// key's value, and they travel in fewer frames than reads.
func TestForwardedReadsCoalesce(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), GroupsPerNode: 8, ReplicaCount: 2}) // 2: some nodes lack some groups (Stale forwards)
	defer func() {
		for _, db := range nodes {
			db.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const keys = 200
	for k := range keys {
		if err := nodes[k%3].Set(ctx, fmt.Sprint("k", k), []byte(fmt.Sprint("v", k))); err != nil {
			t.Fatal(err)
		}
	}
	// Stale reads may lag the writes, and miss them on a replica still
	// being added: wait until every range is where placement puts it (its
	// replicas then stay) and every replica has the writes.
	testutil.Eventually(t, 30*time.Second, "the ranges at their placement", func() bool {
		ids := []string{"n0", "n1", "n2"}
		for r := range 8 {
			want := placement.Replicas(r, ids, 2)
			for i, db := range nodes {
				rep := db.replica(r)
				if (rep != nil) != slices.Contains(want, ids[i]) {
					return false
				}
				if rep == nil {
					continue
				}
				servers, err := rep.group.Configuration()
				if err != nil || len(servers) != len(want) {
					return false
				}
				for _, sv := range servers {
					node, _, _ := raftgroup.ParseServerID(sv.ID)
					if sv.Suffrage != raft.Voter || !slices.Contains(want, node) {
						return false
					}
				}
			}
		}
		return true
	})
	testutil.Eventually(t, 30*time.Second, "every replica to apply the writes", func() bool {
		for _, db := range nodes {
			for k := range keys {
				if v, err := db.Get(ctx, fmt.Sprint("k", k), Stale()); err != nil || string(v) != fmt.Sprint("v", k) {
					return false
				}
			}
		}
		return true
	})
	modes := [][]ReadOption{nil, {ReadIndex()}, {Quorum(2)}, {Stale()}}
	modeNames := []string{"default", "ReadIndex", "Quorum(2)", "Stale"}
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for c := range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := nodes[c%3]
			for i := range 100 {
				k, m := (c*7+i)%keys, (c+i)%len(modes)
				v, err := db.Get(ctx, fmt.Sprint("k", k), modes[m]...)
				if err == nil && string(v) != fmt.Sprint("v", k) {
					err = fmt.Errorf("read %q", v)
				}
				if err != nil {
					select {
					case errs <- fmt.Errorf("%s: %s read of k%d: %w", db.NodeID(), modeNames[m], k, err):
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	var frames, reads int64
	for _, db := range nodes {
		frames += db.fwd.readFrames.Load()
		reads += db.fwd.reads.Load()
	}
	t.Logf("%d forwarded reads in %d frames", reads, frames)
	if reads == 0 || frames >= reads {
		t.Fatalf("%d forwarded reads in %d frames", reads, frames)
	}

	// A single reqRead is still answered: by the leader with the value,
	// by the others with a redirect to it. An answer counts only if the
	// node's term and leadership were the same before and after it: the
	// leader may move on a loaded machine.
	r := groupOf(nodes[0], "k1")
	for _, db := range nodes {
		rep := db.replica(r)
		// A node without a replica leads in no term.
		term := func() uint64 {
			if rep == nil {
				return 0
			}
			return rep.group.Raft().CurrentTerm()
		}
		testutil.Eventually(t, 10*time.Second, fmt.Sprintf("an answer from %s in one term", db.NodeID()), func() bool {
			before, leads := term(), rep != nil && rep.group.IsLeader()
			ans, err := db.serve(ctx, encodeRequest(reqRead, r, []byte("\x00k1")))
			if err != nil || len(ans) == 0 {
				t.Fatalf("%s: %q %v", db.NodeID(), ans, err)
			}
			if term() != before || (rep != nil && rep.group.IsLeader() != leads) {
				return false
			}
			switch {
			case leads && ans[0] == stOK:
				if v, _, _, err := answerEntry(ans); err != nil || string(v) != "v1" {
					t.Fatalf("%s: %q", db.NodeID(), ans)
				}
			case !leads && ans[0] == stRedirect:
			default:
				t.Fatalf("%s (leader: %v): answer %q", db.NodeID(), leads, ans)
			}
			return true
		})
	}
}

// A batch whose destination crashes fails its reads, which route sends
// again, to the range's new leader: every read still returns its value.
func TestForwardedReadsLeaderCrash(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), GroupsPerNode: 8})
	defer func() {
		for _, db := range nodes {
			db.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const keys = 64
	for k := range keys {
		if err := nodes[0].Set(ctx, fmt.Sprint("k", k), []byte(fmt.Sprint("v", k))); err != nil {
			t.Fatal(err)
		}
	}
	// The victim: the node that leads the most ranges.
	victim := slices.MaxFunc(nodes, func(a, b *DB) int {
		return len(hookNode{a}.Leads()) - len(hookNode{b}.Leads())
	})
	if len(hookNode{victim}.Leads()) == 0 {
		t.Fatal("no node leads a range")
	}
	var survivors []*DB
	for _, db := range nodes {
		if db != victim {
			survivors = append(survivors, db)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	crashed := make(chan struct{})
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := survivors[c%2]
			// Read every key until the crash, then every key once more.
			for round := 0; ; round++ {
				select {
				case <-crashed:
					round = -1
				default:
				}
				for k := range keys {
					v, err := db.Get(ctx, fmt.Sprint("k", k))
					if err == nil && string(v) != fmt.Sprint("v", k) {
						err = fmt.Errorf("k%d read %q", k, v)
					}
					if err != nil {
						select {
						case errs <- fmt.Errorf("%s: %w", db.NodeID(), err):
						default:
						}
						return
					}
				}
				if round < 0 {
					return
				}
			}
		}()
	}
	testutil.Eventually(t, 20*time.Second, "reads forwarded to the victim", func() bool {
		return survivors[0].fwd.reads.Load() > 100 && survivors[1].fwd.reads.Load() > 100
	})
	victim.crash()
	close(crashed)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

// groupOf is the replica group that holds key, in db's layout.
func groupOf(db *DB, key string) int {
	_, g := db.lay.Load().locate(key)
	return g
}

// leaderAmong is the index in nodes of the node whose replica of group g
// leads now, and that replica; -1 and nil if none does.
func leaderAmong(nodes []*DB, g int) (int, *replica) {
	for i, db := range nodes {
		if rep := db.replica(g); rep != nil && rep.group.IsLeader() {
			return i, rep
		}
	}
	return -1, nil
}

// waitLeaderAmong polls leaderAmong until some node of nodes leads group
// g (an election may be under way), failing the test after within.
func waitLeaderAmong(t testing.TB, nodes []*DB, g int, within time.Duration) (int, *replica) {
	t.Helper()
	i, rep := -1, (*replica)(nil)
	testutil.Eventually(t, within, fmt.Sprintf("a leader of group %d", g), func() bool {
		i, rep = leaderAmong(nodes, g)
		return rep != nil
	})
	return i, rep
}

// Writes through nodes that do not lead the key's group go to its leader
// coalesced into reqWrites frames; each is applied once and answered with
// its own result.
func TestForwardedWritesCoalesce(t *testing.T) {
	nodes := openCluster(t, 3, Config{Timing: LocalTiming(), GroupsPerNode: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, db := range nodes {
		if err := db.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Leaderships move to the placement plan's leaders once the nodes are
	// in: wait for that, so that no write meets a transfer.
	plan := placement.Plan(2, []string{"n0", "n1", "n2"}, 3)
	testutil.Eventually(t, 30*time.Second, "the plan's leaders", func() bool {
		for g, a := range plan {
			for _, db := range nodes {
				if rep := db.replica(g); rep == nil || rep.group.IsLeader() != (db.NodeID() == a.Leader) {
					return false
				}
			}
		}
		return true
	})
	const clients, perClient = 48, 40
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := nodes[c%3]
			for i := range perClient {
				key := fmt.Sprint("w", c, "-", i)
				err := db.Set(ctx, key, []byte(key))
				if err == nil && i%4 == 0 {
					// A CAS that must fail: the value is not "other".
					var swapped bool
					swapped, err = db.CompareAndSwap(ctx, key, []byte("other"), []byte("x"))
					if err == nil && swapped {
						err = errors.New("CAS swapped a value that differs")
					}
				}
				if err != nil {
					select {
					case errs <- fmt.Errorf("%s: write %s: %w", db.NodeID(), key, err):
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	var frames, writes int64
	for _, db := range nodes {
		frames += db.fwd.writeFrames.Load()
		writes += db.fwd.writes.Load()
	}
	t.Logf("%d forwarded writes in %d frames", writes, frames)
	if writes == 0 || frames >= writes {
		t.Fatalf("%d forwarded writes in %d frames: none coalesced", writes, frames)
	}
	for c := range clients {
		for i := range perClient {
			key := fmt.Sprint("w", c, "-", i)
			if v, err := nodes[(c+1)%3].Get(ctx, key); err != nil || string(v) != key {
				t.Fatalf("%s: %q, %v", key, v, err)
			}
		}
	}
}

func TestWritesWire(t *testing.T) {
	b := encodeReads(reqWrites, 2, 0)
	b = appendRead(b, 3, []byte("cmd-a"))
	b = appendRead(b, 0, []byte("b"))
	writes, err := decodeWrites(b[2:])
	if err != nil || len(writes) != 2 || writes[0].r != 3 || string(writes[0].cmd) != "cmd-a" || writes[1].r != 0 || string(writes[1].cmd) != "b" {
		t.Fatalf("%v %v", writes, err)
	}
	for _, bad := range [][]byte{nil, {5}, {1, 0, 0}, {1, 0, 2, 'x'}, append(append([]byte{}, b[2:]...), 0)} {
		if _, err := decodeWrites(bad); err == nil {
			t.Fatalf("decodeWrites(%q) accepted it", bad)
		}
	}
	// Write answers are never cut short for resending: they have applied.
	big := make([][]byte, 3)
	for i := range big {
		big[i] = append([]byte{stInvalid}, make([]byte, readsFrameBytes)...)
	}
	answers, err := decodeReadAnswers(encodeAnswers(big, false), 3)
	if err != nil || answers[2][0] != stInvalid {
		t.Fatalf("write answers: %v", err)
	}
}
