package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/gridkv/gridkv/internal/loadgen"
)

// etcdCluster is n embedded etcd members in this process, on loopback,
// with an in-process client for each (v3client: function calls, no gRPC
// socket, as GridKV's callers call its DB). Its data dirs live under dir,
// removed by Close. Not safe for concurrent Close; the clients are.
type etcdCluster struct {
	dir     string
	members []*embed.Etcd
	clients []*clientv3.Client
}

// startEtcd starts the members, fsync off (UnsafeNoFsync, as GridKV keeps
// its state in memory), and waits until each has joined the cluster.
func startEtcd(ctx context.Context, n int) (*etcdCluster, error) {
	dir, err := os.MkdirTemp("", "peerbench-etcd-")
	if err != nil {
		return nil, err
	}
	c := &etcdCluster{dir: dir}
	ports, err := freePorts(2 * n)
	if err != nil {
		c.Close()
		return nil, err
	}
	loopback := func(port int) url.URL { return url.URL{Scheme: "http", Host: fmt.Sprint("127.0.0.1:", port)} }
	var initial []string
	for i := 0; i < n; i++ {
		peer := loopback(ports[2*i])
		initial = append(initial, fmt.Sprintf("etcd-%d=%s", i, peer.String()))
	}
	for i := 0; i < n; i++ {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprint("etcd-", i)
		cfg.Dir = filepath.Join(dir, cfg.Name)
		peer, client := loopback(ports[2*i]), loopback(ports[2*i+1])
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "peerbench"
		cfg.ClusterState = embed.ClusterStateFlagNew
		cfg.UnsafeNoFsync = true
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("etcd member %d: %w", i, err)
		}
		c.members = append(c.members, e)
	}
	for i, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			c.Close()
			return nil, fmt.Errorf("etcd member %d: %w", i, err)
		case <-ctx.Done():
			c.Close()
			return nil, fmt.Errorf("etcd member %d not ready: %w", i, ctx.Err())
		}
		c.clients = append(c.clients, v3client.New(e.Server))
	}
	return c, nil
}

// stores returns a loadgen.Store per member; Gets are serializable (served
// by the member's own state, like GridKV's Stale) or linearizable.
func (c *etcdCluster) stores(serializable bool) []loadgen.Store {
	var getOpts []clientv3.OpOption
	if serializable {
		getOpts = append(getOpts, clientv3.WithSerializable())
	}
	stores := make([]loadgen.Store, len(c.clients))
	for i, cli := range c.clients {
		stores[i] = loadgen.Store{
			Get: func(ctx context.Context, key string) error {
				_, err := cli.Get(ctx, key, getOpts...)
				return err
			},
			Set: func(ctx context.Context, key string, value []byte) error {
				_, err := cli.Put(ctx, key, string(value))
				return err
			},
			Retryable: etcdRetryable,
		}
	}
	return stores
}

// etcdRetryable: no leader, leader changed, request timed out
// (Unavailable) and too many requests (ResourceExhausted) are worth
// another try while preloading.
func etcdRetryable(err error) bool {
	var ee rpctypes.EtcdError
	return errors.As(err, &ee) && (ee.Code() == codes.Unavailable || ee.Code() == codes.ResourceExhausted)
}

// Close closes the clients, then the members (each waits for its server
// to stop), then removes the data dirs.
func (c *etcdCluster) Close() error {
	var errs []error
	for _, cli := range c.clients {
		// An in-process client closes by cancelling its context.
		if err := cli.Close(); !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	}
	for _, e := range c.members {
		e.Close()
	}
	errs = append(errs, os.RemoveAll(c.dir))
	return errors.Join(errs...)
}

// freePorts returns k distinct loopback ports that were free a moment ago:
// etcd's initial cluster must name every peer URL before any member
// starts, so the ports are chosen up front.
func freePorts(k int) ([]int, error) {
	var ports []int
	for i := 0; i < k; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close() // held until all are chosen, so none repeats
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
