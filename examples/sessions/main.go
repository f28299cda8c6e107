// Command sessions is an HTTP service that keeps its login sessions in
// GridKV, embedded: run several instances and a session created through
// one is valid on all of them.
//
//	go run ./examples/sessions -http 127.0.0.1:8080
//	go run ./examples/sessions -http 127.0.0.1:8081 -join GOSSIP_ADDR_OF_THE_FIRST
//
//	curl -i -X POST 'http://127.0.0.1:8080/login?user=alice'   # sets a session cookie
//	curl --cookie 'session=ID' http://127.0.0.1:8081/whoami
//	curl --cookie 'session=ID' -X POST http://127.0.0.1:8081/logout
//
// With -demo it starts two instances in this process, logs in through one,
// checks the session through the other, logs out, and exits. With -v,
// GridKV's warnings go to standard error.
//
// The handlers retry what the cluster answers with "try again" (an
// election, a node leaving): see retry, at the end.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/gridkv/gridkv/gridkv"
)

const sessionTTL = 30 * time.Minute

// server is one instance of the service.
type server struct{ db *gridkv.DB }

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("GET /whoami", s.whoami)
	mux.HandleFunc("POST /logout", s.logout)
	// The request's context bounds each handler's retries.
	return http.TimeoutHandler(mux, 10*time.Second, "timed out\n")
}

func (s *server) login(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	if user == "" {
		http.Error(w, "user required", http.StatusBadRequest)
		return
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	ok, err := s.create(r.Context(), "session:"+id, []byte(user))
	if err != nil || !ok {
		http.Error(w, fmt.Sprint("could not store the session: ", err), http.StatusServiceUnavailable)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: "session", Value: id, HttpOnly: true, MaxAge: int(sessionTTL.Seconds())})
	fmt.Fprintf(w, "logged in as %s\n", user)
}

func (s *server) whoami(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie("session")
	if err != nil {
		http.Error(w, "no session", http.StatusUnauthorized)
		return
	}
	var user []byte
	err = retry(r.Context(), func(ctx context.Context) (err error) {
		user, err = s.db.Get(ctx, "session:"+c.Value)
		return err
	})
	switch {
	case errors.Is(err, gridkv.ErrNotFound):
		http.Error(w, "session expired or unknown", http.StatusUnauthorized)
	case err != nil:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	default:
		fmt.Fprintf(w, "you are %s\n", user)
	}
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie("session"); err == nil {
		err := retry(r.Context(), func(ctx context.Context) error { return s.db.Delete(ctx, "session:"+c.Value) })
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintln(w, "logged out")
}

// create stores value at key, expiring after sessionTTL, only if key is
// absent, so that a colliding id can never overwrite a session. One
// command does both: a session can never be left without its expiry. CompareAndSwap is not blindly
// retryable (see retry): when it fails or its outcome is unknown, read the
// key and decide. The id is random, so finding our value there means an
// earlier attempt applied; absent means none did, so try again.
func (s *server) create(ctx context.Context, key string, value []byte) (bool, error) {
	for {
		ok, err := s.db.CompareAndSwap(ctx, key, nil, value, gridkv.WithTTL(sessionTTL))
		if err == nil && ok {
			return true, nil
		}
		if err != nil && (ctx.Err() != nil || !retryable(err)) {
			return false, err
		}
		var held []byte
		err = retry(ctx, func(ctx context.Context) (err error) { held, err = s.db.Get(ctx, key); return err })
		if !errors.Is(err, gridkv.ErrNotFound) {
			return err == nil && bytes.Equal(held, value), err
		}
	}
}

// retryable: ErrUnavailable (no leader or quorum right now: not applied)
// and ErrTimeout (the attempt ran out of time, or lost its leader or
// connection mid-write: a write's outcome is unknown).
func retryable(err error) bool {
	return errors.Is(err, gridkv.ErrTimeout) || errors.Is(err, gridkv.ErrUnavailable)
}

// retry calls op until it succeeds, fails for good, or ctx ends, giving
// each attempt at most 2s. Only for calls that are safe to repeat whatever
// an earlier attempt did: reads, and idempotent writes (Set of a given
// value, Delete), which leave the same state applied twice as once. A
// CompareAndSwap is not: if a timed-out attempt did swap, its retry finds
// the new value and reports false; see create.
func retry(ctx context.Context, op func(ctx context.Context) error) error {
	backoff := 20 * time.Millisecond
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := op(attempt)
		cancel()
		if err == nil || ctx.Err() != nil || !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func main() {
	addr := flag.String("http", "127.0.0.1:8080", "HTTP address")
	join := flag.String("join", "", "gossip address of a running instance")
	demo := flag.Bool("demo", false, "run two instances in this process, exercise them, exit")
	verbose := flag.Bool("v", false, "log GridKV's warnings to standard error")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if *demo {
		if err := runDemo(logger); err != nil {
			log.Fatal(err)
		}
		return
	}
	cfg := gridkv.Config{Logger: logger, Timing: gridkv.LocalTiming()}
	if *join != "" {
		cfg.Seeds = []string{*join}
	}
	db, err := gridkv.Open(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: (&server{db}).routes(), ReadHeaderTimeout: 5 * time.Second}
	fmt.Printf("sessions on http://%s; more instances: go run ./examples/sessions -http OTHER -join %s\n", ln.Addr(), db.GossipAddr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

func runDemo(logger *slog.Logger) error {
	a, err := gridkv.Open(gridkv.Config{NodeID: "web-1", Logger: logger, Timing: gridkv.LocalTiming()})
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := gridkv.Open(gridkv.Config{NodeID: "web-2", Logger: logger, Timing: gridkv.LocalTiming(), Seeds: []string{a.GossipAddr()}})
	if err != nil {
		return err
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.WaitReady(ctx); err != nil {
		return err
	}
	web1 := httptest.NewServer((&server{a}).routes())
	defer web1.Close()
	web2 := httptest.NewServer((&server{b}).routes())
	defer web2.Close()
	fmt.Printf("two instances: web-1 at %s, web-2 at %s, sharing one GridKV cluster\n", web1.URL, web2.URL)

	resp, err := http.Post(web1.URL+"/login?user=alice", "", nil)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "session" {
			cookie = c
		}
	}
	if cookie == nil {
		return fmt.Errorf("login gave no session: %s %s", resp.Status, body)
	}
	fmt.Printf("POST web-1/login?user=alice -> %s   %s", resp.Status, body)
	call := func(method, url string) (string, error) {
		req, _ := http.NewRequest(method, url, nil)
		req.AddCookie(cookie)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Status + "   " + strings.TrimSpace(string(b)), nil
	}
	for _, step := range []struct{ method, url, label string }{
		{"GET", web2.URL + "/whoami", "GET web-2/whoami"},
		{"POST", web2.URL + "/logout", "POST web-2/logout"},
		{"GET", web1.URL + "/whoami", "GET web-1/whoami"},
	} {
		out, err := call(step.method, step.url)
		if err != nil {
			return err
		}
		fmt.Printf("%-20s -> %s\n", step.label, out)
	}
	return nil
}
