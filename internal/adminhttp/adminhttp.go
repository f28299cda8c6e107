package adminhttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gridkv/gridkv/gridkv"
)

// Options configure the Handler. Zero means the default.
type Options struct {
	// ReadyTimeout bounds the readiness check of /readyz and /status.
	// Default 1s.
	ReadyTimeout time.Duration
	// Stopping, when closed, says the node is stopping: from then on
	// /readyz answers 503 and /status says not ready, while the other
	// endpoints go on serving (a program keeps the endpoint up while
	// DB.Close hands the node's ranges away). Default nil: never.
	Stopping <-chan struct{}
}

// NewRegistry returns a registry with the Go runtime's and the process's
// collectors, for a program's /metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves the admin endpoints (see the package doc) for db, with
// metrics from gatherer. Safe for concurrent use.
func Handler(db *gridkv.DB, gatherer prometheus.Gatherer, opts Options) http.Handler {
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = time.Second
	}
	h := &handler{db: db, readyTimeout: opts.ReadyTimeout, stopping: opts.Stopping}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/status", h.status)
	mux.HandleFunc("/healthz", h.healthz)
	mux.HandleFunc("/readyz", h.readyz)
	mux.HandleFunc("/recover", h.recover)
	return mux
}

type handler struct {
	db           *gridkv.DB
	readyTimeout time.Duration
	stopping     <-chan struct{}
}

// errStopping is why a stopping node is not ready.
var errStopping = errors.New("stopping")

// ready is nil when the node is not stopping and WaitReady returns within
// the ready timeout.
func (h *handler) ready(ctx context.Context) error {
	select {
	case <-h.stopping:
		return errStopping
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, h.readyTimeout)
	defer cancel()
	return h.db.WaitReady(ctx)
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	// Locate answers ErrClosed once the DB is closed, without a round trip.
	if _, err := h.db.Locate("healthz"); errors.Is(err, gridkv.ErrClosed) {
		http.Error(w, "closed", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	if err := h.ready(r.Context()); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// statusPage is /status's JSON document: gridkv.Status's JSON form, with
// what this node holds and leads, its role (gridkv.Status.Role), and
// readiness as /readyz judges it.
type statusPage struct {
	gridkv.Status
	GroupsHeld int         `json:"groups_held"`
	GroupsLed  int         `json:"groups_led"`
	RangesHeld int         `json:"ranges_held"`
	RangesLed  int         `json:"ranges_led"`
	Role       gridkv.Role `json:"role"` // leader, follower or none
	Ready      bool        `json:"ready"`
	NotReady   string      `json:"not_ready,omitempty"` // why not, when not
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	out := statusPage{Status: h.db.Status()}
	out.GroupsHeld, out.RangesHeld = out.Held()
	out.GroupsLed, out.RangesLed = out.Led()
	out.Role = out.Status.Role()
	if out.Members == nil { // [], not null, in JSON
		out.Members = []gridkv.MemberStatus{}
	}
	if out.Groups == nil {
		out.Groups = []gridkv.GroupStatus{}
	}
	if err := h.ready(r.Context()); err != nil {
		out.NotReady = err.Error()
	} else {
		out.Ready = true
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}

// recoverTimeout bounds a /recover request (DB.RecoverGroup returns once
// this node's replica leads the group's new creation, within an election
// time-out or two).
const recoverTimeout = time.Minute

// RecoverHeader must be set to "1" on a /recover request. A browser
// sends a custom header cross-origin only after a CORS preflight, which
// this endpoint never grants, so a page a browser on this host visits
// cannot have it run a recovery (a plain cross-origin POST needs none).
const RecoverHeader = "X-GridKV-Recover"

// recover runs DB.RecoverGroup for ?group=N, with ForceRecover when
// ?force=1; POST only, with RecoverHeader set.
func (h *handler) recover(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST /recover?group=N[&force=1] with header "+RecoverHeader+": 1", http.StatusMethodNotAllowed)
		return
	}
	if r.Header.Get(RecoverHeader) != "1" {
		http.Error(w, "header "+RecoverHeader+": 1 required (a guard against cross-site requests): POST /recover?group=N[&force=1]", http.StatusForbidden)
		return
	}
	group, err := strconv.Atoi(r.URL.Query().Get("group"))
	if err != nil || group < 0 {
		http.Error(w, "group must be a group number: POST /recover?group=N[&force=1]", http.StatusBadRequest)
		return
	}
	var opts []gridkv.RecoverOption
	if r.URL.Query().Get("force") == "1" {
		opts = append(opts, gridkv.ForceRecover())
	}
	ctx, cancel := context.WithTimeout(r.Context(), recoverTimeout)
	defer cancel()
	switch err := h.db.RecoverGroup(ctx, group, opts...); {
	case err == nil:
		fmt.Fprintf(w, "group %d recovered: a new creation of it, led by this node's replica alone; the reconciler adds replicas\n", group)
	case errors.Is(err, gridkv.ErrInvalid):
		http.Error(w, err.Error(), http.StatusBadRequest)
	case errors.Is(err, gridkv.ErrTimeout):
		http.Error(w, err.Error(), http.StatusGatewayTimeout)
	default:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	}
}
