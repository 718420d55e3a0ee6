// Command xds-go-server is the comparison peer for the xDS scale benchmark:
// a stock go-control-plane server that serves the same resources, to the same
// simulated clients, as Meshward's control plane does.
//
// It is deliberately a plain go-control-plane user (snapshot cache in ADS
// mode, one snapshot per node ID, no custom callbacks) so that the benchmark
// compares Meshward with what people would otherwise deploy.
//
// Usage:
//
//	xds-go-server --listen 127.0.0.1:PORT --cert server.pem --key server.key \
//	    --ca ca.pem --v1 v1.pb --v2 v2.pb --nodes nodes.txt
//
// Protocol with the benchmark driver: after every node has the v1 snapshot and
// the listener is bound, one line "READY" goes to stdout. Each stdin line "v1"
// or "v2" sets that snapshot for every node and answers "SET <nanoseconds>".
// EOF on stdin shuts the server down and exits 0.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"

	// Nested Anys in the benchmark resources (HCM in listeners, TLS transport
	// sockets and protocol options in clusters). Unmarshalling would work
	// without them, but with them registered the cache's reference walk and
	// any debugging output see real messages rather than opaque bytes.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// shutdownGrace bounds GracefulStop: xDS streams never end on their own, so
// a graceful stop can otherwise wait forever on a client that stays connected.
const shutdownGrace = 2 * time.Second

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "xds-go-server:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "", "address to listen on, e.g. 127.0.0.1:18000")
	certFile := flag.String("cert", "", "server certificate chain (PEM)")
	keyFile := flag.String("key", "", "server private key (PEM)")
	caFile := flag.String("ca", "", "CA bundle that client certificates must chain to (PEM)")
	v1File := flag.String("v1", "", "snapshot v1: a binary DiscoveryResponse")
	v2File := flag.String("v2", "", "snapshot v2: a binary DiscoveryResponse")
	nodesFile := flag.String("nodes", "", "node IDs, one per line")
	flag.Parse()
	for _, f := range []struct{ name, val string }{
		{"listen", *listen}, {"cert", *certFile}, {"key", *keyFile}, {"ca", *caFile},
		{"v1", *v1File}, {"v2", *v2File}, {"nodes", *nodesFile},
	} {
		if f.val == "" {
			return fmt.Errorf("missing required flag --%s", f.name)
		}
	}
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}

	tlsConfig, err := loadTLS(*certFile, *keyFile, *caFile)
	if err != nil {
		return err
	}
	snapshots := map[string]*cache.Snapshot{}
	for name, path := range map[string]string{"v1": *v1File, "v2": *v2File} {
		if snapshots[name], err = loadSnapshot(path); err != nil {
			return fmt.Errorf("--%s %s: %w", name, path, err)
		}
	}
	nodes, err := loadNodes(*nodesFile)
	if err != nil {
		return fmt.Errorf("--nodes %s: %w", *nodesFile, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Only errors are worth printing: at benchmark scale the cache's info and
	// debug lines (one per watch) would cost more than the serving itself.
	logger := gcplog.LoggerFuncs{ErrorFunc: func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "go-control-plane: "+format+"\n", args...)
	}}
	snapshotCache := cache.NewSnapshotCache(true, cache.IDHash{}, logger)
	if _, err := setAll(ctx, snapshotCache, nodes, snapshots["v1"]); err != nil {
		return err
	}

	grpcServer := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		// Every simulated client has one connection with one ADS stream, but
		// no per-connection limit should be the bottleneck being measured.
		grpc.MaxConcurrentStreams(math.MaxUint32),
	)
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, server.NewServer(ctx, snapshotCache, nil))

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- grpcServer.Serve(lis) }()

	// os.Stdout is unbuffered in Go, so each line reaches the driver at once.
	fmt.Println("READY")

	cmdErr := serveCommands(ctx, snapshotCache, nodes, snapshots)

	// Cancelling ctx makes go-control-plane end its stream handlers, which
	// lets GracefulStop finish promptly; Stop is the fallback.
	cancel()
	stopped := make(chan struct{})
	go func() { grpcServer.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		grpcServer.Stop()
	}
	if err := <-serveErr; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serving: %w", err)
	}
	return cmdErr
}

// serveCommands runs the stdin protocol until EOF.
func serveCommands(ctx context.Context, c cache.SnapshotCache, nodes []string, snapshots map[string]*cache.Snapshot) error {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd := strings.TrimSpace(in.Text())
		if cmd == "" {
			continue
		}
		snap, ok := snapshots[cmd]
		if !ok {
			// Fail loudly: a driver waiting for "SET" would otherwise hang.
			return fmt.Errorf("stdin: unknown command %q (want v1 or v2)", cmd)
		}
		took, err := setAll(ctx, c, nodes, snap)
		if err != nil {
			return err
		}
		fmt.Printf("SET %d\n", took.Nanoseconds())
	}
	if err := in.Err(); err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	return nil
}

// setAll gives every node the same snapshot object, the way a go-control-plane
// user scoping config per identity would, and reports how long that took.
// The time covers queueing the responses onto each open stream, not their
// serialization or delivery, which happen on the stream goroutines.
func setAll(ctx context.Context, c cache.SnapshotCache, nodes []string, snap *cache.Snapshot) (time.Duration, error) {
	start := time.Now()
	for _, node := range nodes {
		if err := c.SetSnapshot(ctx, node, snap); err != nil {
			return 0, fmt.Errorf("setting snapshot for node %q: %w", node, err)
		}
	}
	return time.Since(start), nil
}

func loadTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--cert %s / --key %s: %w", certFile, keyFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--ca %s: no PEM certificates found", caFile)
	}
	// Same policy as Meshward's control plane: clients must present a
	// certificate (a SPIFFE SVID) chaining to the CA; plain chain
	// verification suffices since SVIDs carry no DNS SAN to check.
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// loadSnapshot reads one DiscoveryResponse whose resources, of mixed types,
// make up a whole snapshot.
func loadSnapshot(path string) (*cache.Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var resp discovery.DiscoveryResponse
	if err := proto.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("not a DiscoveryResponse: %w", err)
	}
	if resp.GetVersionInfo() == "" {
		return nil, errors.New("version_info is empty")
	}

	byType := map[resource.Type][]types.Resource{}
	seen := map[string]bool{}
	for i, a := range resp.GetResources() {
		msg, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{})
		if errors.Is(err, protoregistry.NotFound) {
			return nil, fmt.Errorf("resource %d: type %s is not compiled into this binary", i, a.GetTypeUrl())
		}
		if err != nil {
			return nil, fmt.Errorf("resource %d (%s): %w", i, a.GetTypeUrl(), err)
		}
		// The cache keys resources by name, so a duplicate or unnamed one
		// would silently vanish from what clients receive.
		name := cache.GetResourceName(msg)
		key := a.GetTypeUrl() + " " + name
		if name == "" || seen[key] {
			return nil, fmt.Errorf("resource %d (%s): empty or duplicate name %q", i, a.GetTypeUrl(), name)
		}
		seen[key] = true
		byType[a.GetTypeUrl()] = append(byType[a.GetTypeUrl()], msg)
	}

	snap, err := cache.NewSnapshot(resp.GetVersionInfo(), byType)
	if err != nil {
		return nil, err
	}
	// Inconsistency (e.g. an EDS resource no cluster names) does not stop
	// go-control-plane from serving, so report it and carry on.
	if err := snap.Consistent(); err != nil {
		fmt.Fprintf(os.Stderr, "xds-go-server: warning: %s is not consistent: %v\n", path, err)
	}
	// The cache would otherwise hash every resource on first delta use, and
	// that one-off cost would land inside the first timed SET of v2.
	if err := snap.ConstructVersionMap(); err != nil {
		return nil, fmt.Errorf("hashing resources: %w", err)
	}
	return snap, nil
}

func loadNodes(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var nodes []string
	for _, line := range strings.Split(string(data), "\n") {
		if id := strings.TrimSpace(line); id != "" {
			nodes = append(nodes, id)
		}
	}
	if len(nodes) == 0 {
		return nil, errors.New("no node IDs")
	}
	return nodes, nil
}
