package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gridkv/gridkv/internal/adminhttp"
)

// runRecover is `gridkv recover`: it asks a running node, through its admin
// endpoint, to bring back a replica group that lost its majority from that
// node's replica (POST /recover; gridkv.DB.RecoverGroup). It prints the
// node's answer and returns the exit status: 0 when the group was
// recovered, 1 when the node refused or failed, 2 for bad flags.
func runRecover(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("gridkv recover", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:7201", "the admin endpoint (-admin-addr) of the node whose replica to keep: host:port or a URL")
	group := fs.Int("group", -1, "the replica group to recover (group 0 first when it lost its majority too)")
	force := fs.Bool("force", false, "recover even though the node still sees a majority of the group alive or heard from its leader lately (see README: what forcing risks)")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the node's answer")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: gridkv recover -admin host:port -group N [-force]")
		fmt.Fprintln(stderr, "Brings back a replica group that lost a majority of its replicas for good, from the replica of the node")
		fmt.Fprintln(stderr, "whose admin endpoint is given; see README, \"Recovering a group that lost its majority\".")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || *group < 0 {
		fmt.Fprintln(stderr, "gridkv recover: -group N is required, and nothing else")
		fs.Usage()
		return 2
	}
	base := *admin
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(base)
	if err != nil {
		fmt.Fprintln(stderr, "gridkv recover: -admin:", err)
		return 2
	}
	q := url.Values{"group": {strconv.Itoa(*group)}}
	if *force {
		q.Set("force", "1")
	}
	u.Path, u.RawQuery = "/recover", q.Encode()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		fmt.Fprintln(stderr, "gridkv recover:", err)
		return 2
	}
	req.Header.Set(adminhttp.RecoverHeader, "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "gridkv recover:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "gridkv recover: %s: %s", resp.Status, body)
		return 1
	}
	fmt.Fprintf(stdout, "%s", body)
	return 0
}
