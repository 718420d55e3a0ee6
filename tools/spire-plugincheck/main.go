// Command spire-plugincheck runs the configuration checks of SPIRE's built-in
// plugins against a spire-server or spire-agent config file.
//
// `spire-server validate` and `spire-agent validate` (SPIRE v1.13.3) only
// decode the top-level HCL; they never hand plugin_data to the plugins. A
// plugin config error therefore passes `validate` and only shows up when the
// server or agent starts and configures the plugin: e.g. a BundlePublisher
// "k8s_configmap" cluster without `format` ("missing bundle format in cluster
// ...") fails only once the server runs in a cluster.
//
// SPIRE's built-in plugins implement the Config service's Validate RPC
// (configv1.ValidateRequest -> ValidateResponse{Valid, Notes}), which runs
// the same checks as Configure without side effects, but nothing calls it.
// This program does: it parses the file with SPIRE's own loader (ParseFile,
// so -expandEnv behaves as in `spire-server run -expandEnv`), extracts the
// plugin configs the way SPIRE does (catalog.PluginConfigsFromHCLNode, which
// also handles plugin_data_file), finds each plugin among SPIRE's built-ins
// (the server/agent catalog's BuiltIns lists) and calls its Validate with the
// config's trust_domain and the plugin_data text SPIRE would pass.
//
// Usage: spire-plugincheck server|agent [-expandEnv] CONFIG
//
// One line per plugin, in config order:
//
//	ok <Type> "<name>"                   Validate accepted plugin_data
//	invalid <Type> "<name>": <reason>    the plugin would fail to configure
//	unchecked <Type> "<name>": <reason>  no check available (not a failure):
//	                                     external plugin_cmd, disabled, no
//	                                     Validate, or no configuration at all
//
// Exit status: 0 if nothing is invalid, 1 if anything is, 2 on usage or
// config parse errors.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	agentrun "github.com/spiffe/spire/cmd/spire-agent/cli/run"
	serverrun "github.com/spiffe/spire/cmd/spire-server/cli/run"
	agentcatalog "github.com/spiffe/spire/pkg/agent/catalog"
	"github.com/spiffe/spire/pkg/common/catalog"
	servercatalog "github.com/spiffe/spire/pkg/server/catalog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// configServiceName is the gRPC name of the Config service (configv1).
const configServiceName = "spire.service.common.config.v1.Config"

// validator is the Validate half of configv1.ConfigServer.
type validator interface {
	Validate(context.Context, *configv1.ValidateRequest) (*configv1.ValidateResponse, error)
}

const usage = "usage: spire-plugincheck server|agent [-expandEnv] CONFIG"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "server" && args[0] != "agent") {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	role := args[0]
	flags := flag.NewFlagSet("spire-plugincheck "+role, flag.ContinueOnError)
	flags.SetOutput(stderr)
	expandEnv := flags.Bool("expandEnv", false, "expand $VARIABLES in the config file (as spire-"+role+" run -expandEnv does)")
	if err := flags.Parse(args[1:]); err != nil || flags.NArg() != 1 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	path := flags.Arg(0)

	td, plugins, builtIns, err := load(role, path, *expandEnv)
	if err != nil {
		fmt.Fprintf(stderr, "spire-plugincheck: %s: %v\n", path, err)
		return 2
	}

	code := 0
	for _, pc := range plugins {
		verdict, detail := check(role, td, pc, builtIns)
		line := fmt.Sprintf("%s %s %q", verdict, pc.Type, pc.Name)
		if detail != "" {
			line += ": " + detail
		}
		fmt.Fprintln(stdout, line)
		if verdict == "invalid" {
			code = 1
		}
	}
	return code
}

// load parses the config with SPIRE's loader and returns its trust domain,
// its plugin configs and the built-in plugins per plugin type.
func load(role, path string, expandEnv bool) (spiffeid.TrustDomain, catalog.PluginConfigs, map[string][]catalog.BuiltIn, error) {
	var tdName string
	var pluginsNode ast.Node
	var repos map[string]catalog.PluginRepo
	switch role {
	case "server":
		c, err := serverrun.ParseFile(path, expandEnv)
		if err != nil {
			return spiffeid.TrustDomain{}, nil, nil, err
		}
		if c.Server == nil {
			return spiffeid.TrustDomain{}, nil, nil, errors.New("no server section")
		}
		tdName, pluginsNode = c.Server.TrustDomain, c.Plugins
		repos = new(servercatalog.Repository).Plugins()
	case "agent":
		c, err := agentrun.ParseFile(path, expandEnv)
		if err != nil {
			return spiffeid.TrustDomain{}, nil, nil, err
		}
		if c.Agent == nil {
			return spiffeid.TrustDomain{}, nil, nil, errors.New("no agent section")
		}
		tdName, pluginsNode = c.Agent.TrustDomain, c.Plugins
		repos = new(agentcatalog.Repository).Plugins()
	}

	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return spiffeid.TrustDomain{}, nil, nil, fmt.Errorf("could not parse trust_domain %q: %w", tdName, err)
	}
	if pluginsNode == nil {
		return spiffeid.TrustDomain{}, nil, nil, errors.New("plugins section must be configured")
	}
	plugins, err := catalog.PluginConfigsFromHCLNode(pluginsNode)
	if err != nil {
		return spiffeid.TrustDomain{}, nil, nil, err
	}
	builtIns := make(map[string][]catalog.BuiltIn, len(repos))
	for typ, repo := range repos {
		builtIns[typ] = repo.BuiltIns()
	}
	return td, plugins, builtIns, nil
}

// check validates one plugin config; it returns "ok", "invalid" or
// "unchecked" and a detail message.
func check(role string, td spiffeid.TrustDomain, pc catalog.PluginConfig, builtIns map[string][]catalog.BuiltIn) (string, string) {
	switch {
	case pc.Disabled:
		return "unchecked", "disabled (enabled = false)"
	case pc.IsExternal():
		return "unchecked", "external plugin (plugin_cmd); only built-ins are checked"
	case role == "server" && pc.Type == "DataStore":
		// The server loads the SQL DataStore directly, outside the plugin
		// catalog; its config checks are unexported and only run inside
		// Configure, which also opens the database.
		if pc.Name != "sql" {
			return "invalid", fmt.Sprintf("only the built-in %q DataStore is supported", "sql")
		}
		return "unchecked", "the sql DataStore has no Validate; its settings are only checked when Configure opens the database"
	}

	candidates, ok := builtIns[pc.Type]
	if !ok {
		return "invalid", fmt.Sprintf("unsupported plugin type %q", pc.Type)
	}
	var builtIn *catalog.BuiltIn
	for i := range candidates {
		if candidates[i].Name == pc.Name {
			builtIn = &candidates[i]
		}
	}
	if builtIn == nil {
		return "invalid", fmt.Sprintf("no built-in plugin %q for type %q", pc.Name, pc.Type)
	}

	data := ""
	if pc.DataSource != nil {
		var err error
		if data, err = pc.DataSource.Load(); err != nil {
			return "invalid", fmt.Sprintf("failed to load plugin data: %v", err)
		}
	}

	v := initBuiltIn(builtIn)
	if v == nil {
		if data != "" {
			// What SPIRE's catalog reports for plugin_data it cannot pass on.
			return "invalid", "no supported configuration interface found (the plugin takes no plugin_data)"
		}
		return "unchecked", "plugin takes no configuration"
	}

	resp, err := validate(v, td, data)
	notes := strings.Join(resp.GetNotes(), "; ")
	switch {
	case status.Code(err) == codes.Unimplemented:
		return "unchecked", "plugin does not implement Validate"
	case err != nil:
		if notes == "" {
			notes = status.Convert(err).Message()
		}
		return "invalid", notes
	case !resp.GetValid():
		return "invalid", "rejected by Validate: " + notes
	case notes != "":
		return "ok", "notes: " + notes
	}
	return "ok", ""
}

// initBuiltIn does what SPIRE's plugin loader does before any RPC (see
// spire-plugin-sdk private.Register): it registers the plugin's servers,
// giving a logger to implementations that want one (some Validate methods
// log), and returns the implementation behind the Config service, if any.
// Host services are not brokered; Validate does not use them.
func initBuiltIn(builtIn *catalog.BuiltIn) validator {
	var v validator
	registrar := grpc.NewServer()
	for _, s := range append([]pluginsdk.ServiceServer{builtIn.Plugin}, builtIn.Services...) {
		impl := s.RegisterServer(registrar)
		if l, ok := impl.(pluginsdk.NeedsLogger); ok {
			l.SetLogger(hclog.NewNullLogger())
		}
		if s.GRPCServiceName() == configServiceName {
			v, _ = impl.(validator)
		}
	}
	return v
}

// validate calls Validate as SPIRE's catalog would, turning a panic into an
// error so that one broken check does not hide the others.
func validate(v validator, td spiffeid.TrustDomain, data string) (resp *configv1.ValidateResponse, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("spire-plugincheck could not run Validate: panic: %v", r)
		}
	}()
	return v.Validate(context.Background(), &configv1.ValidateRequest{
		CoreConfiguration: &configv1.CoreConfiguration{TrustDomain: td.Name()},
		HclConfiguration:  data,
	})
}
