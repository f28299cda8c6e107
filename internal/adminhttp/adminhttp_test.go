package adminhttp

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gridkv/gridkv/gridkv"
	"github.com/gridkv/gridkv/internal/testutil"
)

func TestMain(m *testing.M) { testutil.VerifyNoLeaks(m) }

func get(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// Every endpoint on a single-node DB: before it is ready where that can be
// seen, while it serves, and after Close.
func TestEndpoints(t *testing.T) {
	db, err := gridkv.Open(gridkv.Config{Timing: gridkv.LocalTiming(), NodeID: "n1", Ranges: 16,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	srv := httptest.NewServer(Handler(db, NewRegistry(), Options{ReadyTimeout: 200 * time.Millisecond}))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()

	testutil.Eventually(t, 30*time.Second, "/readyz 200", func() bool {
		code, _ := get(t, srv, "/readyz")
		return code == http.StatusOK
	})
	if code, body := get(t, srv, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, body := get(t, srv, "/metrics")
	if code != http.StatusOK || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_cpu_seconds_total") {
		t.Errorf("/metrics = %d, %.200q", code, body)
	}
	if code, body := get(t, srv, "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/ = %d %.200q", code, body)
	}
	if code, body := get(t, srv, "/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Errorf("/debug/pprof/goroutine = %d %.200q", code, body)
	}
	if code, _ := get(t, srv, "/debug/pprof/cmdline"); code != http.StatusOK {
		t.Errorf("/debug/pprof/cmdline = %d", code)
	}

	code, body = get(t, srv, "/status")
	var st statusPage
	if err := json.Unmarshal([]byte(body), &st); code != http.StatusOK || err != nil {
		t.Fatalf("/status = %d %q: %v", code, body, err)
	}
	if st.NodeID != "n1" || st.Addr != db.Addr() || st.GossipAddr != db.GossipAddr() || !st.Ready || st.NotReady != "" || st.Ranges != 16 {
		t.Errorf("/status header: %s", body)
	}
	if len(st.Members) != 1 || st.Members[0].ID != "n1" || st.Members[0].State != gridkv.MemberAlive || st.Members[0].Addr != db.Addr() {
		t.Errorf("/status members: %s", body)
	}
	if len(st.Groups) != 1 || st.Groups[0].Leader != "n1" || st.Groups[0].Role != gridkv.RoleLeader || st.Groups[0].Ranges != 16 ||
		len(st.Groups[0].Replicas) != 1 {
		t.Errorf("/status groups: %s", body)
	}
	if st.GroupsHeld != 1 || st.GroupsLed != 1 || st.RangesHeld != 16 || st.RangesLed != 16 || st.Role != gridkv.RoleLeader {
		t.Errorf("/status counts: %s", body)
	}
	// The keys as JSON has them.
	for _, key := range []string{`"node_id": "n1"`, `"addr"`, `"gossip_addr"`, `"advertise_addr"`, `"gossip_advertise_addr"`, `"ranges": 16`,
		`"members"`, `"id": "n1"`, `"incarnation"`, `"leads"`, `"state": "alive"`,
		`"groups"`, `"group": 0`, `"leader": "n1"`, `"replicas"`, `"role": "leader"`,
		`"groups_held": 1`, `"groups_led": 1`, `"ranges_held": 16`, `"ranges_led": 16`, `"ready": true`} {
		if !strings.Contains(body, key) {
			t.Errorf("/status lacks %s: %s", key, body)
		}
	}

	db.Close()
	if code, _ := get(t, srv, "/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz after Close = %d", code)
	}
	if code, body := get(t, srv, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "closed") {
		t.Errorf("/readyz after Close = %d %q", code, body)
	}
	code, body = get(t, srv, "/status")
	if err := json.Unmarshal([]byte(body), &st); code != http.StatusOK || err != nil || st.Ready || st.NodeID != "n1" {
		t.Errorf("/status after Close = %d %s", code, body)
	}
	for _, key := range []string{`"members": []`, `"groups": []`, `"role": "none"`, `"groups_held": 0`} {
		if !strings.Contains(body, key) {
			t.Errorf("/status after Close lacks %s: %s", key, body)
		}
	}
	if code, _ := get(t, srv, "/nothing"); code != http.StatusNotFound {
		t.Errorf("/nothing = %d", code)
	}
}

// /readyz says 503, with the reason, when WaitReady does not return nil
// in time: here the request's context has already ended. (A node whose
// ranges lost their leaders would need a cluster to show it.)
func TestReadyzNotReady(t *testing.T) {
	db, err := gridkv.Open(gridkv.Config{Timing: gridkv.LocalTiming(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	h := Handler(db, NewRegistry(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil).WithContext(ctx))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "not ready") {
		t.Errorf("/readyz with an ended request = %d %q", rec.Code, rec.Body.String())
	}
}

// Once Options.Stopping is closed, /readyz answers 503 and /status says
// not ready, while /healthz, /metrics and /status still serve.
func TestStopping(t *testing.T) {
	db, err := gridkv.Open(gridkv.Config{Timing: gridkv.LocalTiming(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stopping := make(chan struct{})
	srv := httptest.NewServer(Handler(db, NewRegistry(), Options{Stopping: stopping}))
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	testutil.Eventually(t, 30*time.Second, "/readyz 200", func() bool {
		code, _ := get(t, srv, "/readyz")
		return code == http.StatusOK
	})
	close(stopping)
	if code, body := get(t, srv, "/readyz"); code != http.StatusServiceUnavailable || body != "not ready: stopping\n" {
		t.Errorf("/readyz while stopping = %d %q", code, body)
	}
	code, body := get(t, srv, "/status")
	var st struct {
		Ready    bool   `json:"ready"`
		NotReady string `json:"not_ready"`
		NodeID   string `json:"node_id"`
	}
	if err := json.Unmarshal([]byte(body), &st); code != http.StatusOK || err != nil || st.Ready || st.NotReady != "stopping" || st.NodeID != db.NodeID() {
		t.Errorf("/status while stopping = %d %s", code, body)
	}
	if code, _ := get(t, srv, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while stopping = %d", code)
	}
	if code, body := get(t, srv, "/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics while stopping = %d", code)
	}
}

// /recover runs DB.RecoverGroup: POST only, a group number required; a
// single node's group is this replica alone already (200), a group it
// does not hold is refused (400).
func TestRecover(t *testing.T) {
	db, err := gridkv.Open(gridkv.Config{Timing: gridkv.LocalTiming(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	h := Handler(db, NewRegistry(), Options{})
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/recover?group=0", http.StatusMethodNotAllowed},
		{"POST no header", "/recover?group=0", http.StatusForbidden},
		{"POST", "/recover", http.StatusBadRequest},
		{"POST", "/recover?group=x", http.StatusBadRequest},
		{"POST", "/recover?group=999", http.StatusBadRequest},
		{"POST", "/recover?group=0", http.StatusOK},
		{"POST", "/recover?group=0&force=1", http.StatusOK},
	} {
		rec := httptest.NewRecorder()
		method, _, bare := strings.Cut(tc.method, " ")
		req := httptest.NewRequest(method, tc.path, nil)
		if !bare {
			req.Header.Set(RecoverHeader, "1")
		}
		h.ServeHTTP(rec, req)
		if rec.Code != tc.code {
			t.Errorf("%s %s = %d %q, want %d", tc.method, tc.path, rec.Code, rec.Body.String(), tc.code)
		}
	}
}
