// Package respserver serves a gridkv.DB over the Redis protocol (RESP2),
// so that redis-cli, redis-benchmark and Redis client libraries can use
// a node. cmd/gridkv wires it to a listener.
//
//	srv := respserver.New(db, respserver.Options{RequestTimeout: 5 * time.Second})
//	go srv.Serve(ln)            // returns ErrServerClosed after Shutdown
//	...
//	srv.Shutdown(ctx)           // finish what was read, then close
//	db.Close()
//
// # Connections
//
// RESP is parsed and written with github.com/tidwall/redcon's Reader and
// Writer; the accept loop is this package's own, because redcon.Server
// closes every connection the moment its listener closes (the replies of
// commands in flight are lost) and does not wait for its goroutines.
// A temporary accept error (EMFILE: out of file descriptors) does not end
// Serve: it retries after a back-off of 5ms doubling to 1s, as net/http
// does, until Shutdown.
// Each connection has one goroutine: it reads a pipeline (every command
// already received), runs the commands in order, and sends their replies
// in one write. Connections run in parallel. Each command gets a context
// ending after Options.RequestTimeout.
//
// # Commands
//
//	PING [msg], ECHO msg, QUIT, SELECT 0
//	GET key                      bulk, or nil if absent
//	SET key value [EX s|PX ms] [NX|XX]
//	                             OK, or nil when NX/XX refused. Without
//	                             EX/PX the key never expires (a TTL it had
//	                             is dropped, as in Redis). NX is one
//	                             CompareAndSwap from absent. XX reads the
//	                             key's version (linearizably) and writes
//	                             with CompareVersionAndSwap over exactly
//	                             it, reading again while other writes come
//	                             between: it writes only over a key that
//	                             exists at the moment of the write. KEEPTTL
//	                             and GET are not supported (syntax error).
//	DEL key...                   the number of keys this call removed that
//	                             existed: per key, a linearizable read of
//	                             its value then CompareAndDelete of that
//	                             value, again while other writes come
//	                             between, so the count is exact. (A value
//	                             over this node's MaxValueBytes cannot be
//	                             compared; such a key is deleted with
//	                             Delete and counted.) A key named twice
//	                             counts once. Two round trips per key.
//	EXISTS key...                keys present (a key named twice counts twice)
//	INCR, DECR, INCRBY, DECRBY   DB.Incr: one command, the new value
//	EXPIRE key seconds           1 if the key exists (its TTL is replaced),
//	                             0 if absent; seconds <= 0 deletes it, as
//	                             in Redis (1 if it existed)
//	TTL key, PTTL key            -2 absent, -1 no expiry, else the time
//	                             left by this node's clock (TTL rounded)
//	CAS key old new              1 if key held old and now holds new, else 0
//	CAD key value                1 if key held value and is now deleted, else 0
//	SCAN cursor [MATCH p*] [COUNT n]
//	                             see below
//	INFO [server|clients]        "# Server\r\nkey:value\r\n...": node id,
//	                             members, groups and ranges held and
//	                             led, role (gridkv.Status.Held, Led and
//	                             Role: leader: leads a group; follower:
//	                             holds replicas and leads none; none)
//	CLIENT READMODE [lease|readindex|quorum N|stale]
//	                             this connection's reads (GET, EXISTS,
//	                             TTL, PTTL, SCAN): lease is the default
//	                             (gridkv's default read: the leader under
//	                             its lease), readindex gridkv.ReadIndex(),
//	                             quorum N gridkv.Quorum(N), stale
//	                             gridkv.Stale(). Without an argument it
//	                             reports the mode. SCAN has no quorum
//	                             read: under quorum N it reads as lease.
//	                             DEL and SET XX read linearizably whatever
//	                             the mode.
//	CLIENT SETNAME, GETNAME, SETINFO
//	COMMAND [...]                an empty array (COMMAND COUNT: 0)
//	CONFIG GET param             save "" and appendonly "no" (what
//	                             redis-benchmark reads); others: empty
//
// # SCAN cursors
//
// A Redis cursor is an unsigned 64-bit decimal to the clients (go-redis
// and redis-cli --scan parse it so), and "0" starts and ends a scan; a
// gridkv scan resumes after a key, of up to 64 KiB. So a cursor names the
// last key of the page it ended, kept in a table on this server: the
// newest cursors are kept, up to Options.MaxCursors (10,000) of them
// holding up to Options.MaxCursorBytes (16 MiB) of keys, a cursor may be
// used more than once, and a cursor unknown to this node (handed out by another
// node or before a restart, or dropped for newer ones) is the error "ERR
// invalid cursor". Pages are in key order; each page is read at its own
// point in time (see gridkv.DB.Scan), so a key written during a scan may
// or may not appear, and a key present throughout appears exactly once.
// MATCH takes a prefix pattern only (abc*, or *); any other pattern is an
// error. A page may end with a cursor after which nothing follows. COUNT
// is at most 10,000: a larger one is taken as 10,000.
//
// A SCAN page is expensive. Each SCAN command is one gridkv.DB.Scan from
// the cursor's key, with COUNT as its Limit, and that reads a page of
// every range before it yields its first key; as the store keeps no key
// order, each range's page costs the node serving it (the range's group
// leader, or a replica under READMODE stale) a walk of all of the range's
// entries. So every SCAN command walks every key of the cluster, whatever
// its COUNT, and a scan to the end of N keys walks them about N/COUNT
// times: redis-cli --scan (COUNT 10 unless told otherwise) over a million
// keys walks the store 100,000 times. Use a large COUNT, or keep SCAN
// for small key spaces.
//
// # Errors
//
// Wrong arity: "ERR wrong number of arguments for 'x' command". Unknown
// command: "ERR unknown command 'x', with args beginning with: ...".
// gridkv's errors map to Redis-style prefixes, followed by gridkv's text:
//
//	gridkv.ErrTimeout, a write whose outcome is unknown
//	                             TIMEOUT outcome unknown: ...
//	gridkv.ErrTimeout otherwise  TIMEOUT ... (nothing was applied)
//	gridkv.ErrUnavailable        TRYAGAIN ... (no quorum or leader reachable)
//	gridkv.ErrMemoryLimit        OOM ...
//	gridkv.ErrInvalid, ErrClosed, others
//	                             ERR ...
//
// A multi-key command (DEL, EXISTS) that fails on a key answers that
// error; for DEL the keys before it are deleted.
package respserver
