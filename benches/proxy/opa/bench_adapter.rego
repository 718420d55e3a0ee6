# METADATA
# description: |
#   benches/proxy.sh's envoy-opa target: the decision opa-envoy-plugin
#   returns to each Envoy of the pair. It delegates to the parity test's
#   adapter (tests/fixtures/ext_authz/adapter: caller and service looked up
#   in data.parity_registry, then data.meshward.authz.decision), after one
#   fix-up for the outbound sidecar.
#
#   The outbound Envoy listens in plain HTTP for its own agent, so Envoy sends
#   no attributes.source.principal. Meshward's outbound dataplane judges such
#   a request with the caller = its own SVID's ID; the same fact reaches
#   the plugin as the `meshward_caller` context extension, which the outbound
#   Envoy's route sets statically (benches/proxy/envoy_bootstrap.py
#   --ext-authz). It is sidecar configuration, not request data: a client
#   cannot set or override it (a request header could be forged). The inbound
#   Envoy sets no `meshward_caller`; there the principal is the verified
#   peer certificate's URI SAN, as before.
package bench_adapter

own_identity := object.get(input, ["attributes", "contextExtensions", "meshward_caller"], "")

as_own_identity := object.union(input, {"attributes": {"source": {"principal": own_identity}}})

decision := d if {
	own_identity != ""
	d := data.adapter.decision with input as as_own_identity
}

decision := d if {
	own_identity == ""
	d := data.adapter.decision
}
