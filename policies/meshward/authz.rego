# METADATA
# description: |
#   Entry point of the reference bundle. The decision rule is
#   data.meshward.authz.decision (opa-envoy-plugin's object form plus
#   "reason"); data.meshward.authz.allow is the same answer as a bool.
#
#   Layers, as in a layered OPA setup: global, teams, agent_types, agents,
#   and mcp for the JSON-RPC messages of `protocol: mcp` services.
#   Any deny from any layer wins; otherwise at least one layer must grant.
#   The same policy runs on the caller's sidecar (outbound), the service's
#   sidecar (inbound) and behind Envoy's ext_authz: only
#   input.meshward.direction differs.
package meshward.authz

# Rules of other packages are referenced by their full path, not through an
# import: regorus's Rego VM resolves `alias.rule` by evaluating the whole
# aliased package, which made every request several times slower.

# Denials, headline first: preconditions (identity, registration, service,
# environment), then explicit prohibitions from the most specific layer to
# the least, then missing permissions.
denials := array.concat(
	array.concat(
		array.concat(sort(data.meshward.global.precondition_deny), sort(data.meshward.agents.deny)),
		sort(data.meshward.mcp.deny),
	),
	array.concat(
		array.concat(sort(data.meshward.teams.deny), sort(data.meshward.agent_types.deny)),
		sort(data.meshward.global.permission_deny),
	),
)

grants := array.concat(
	array.concat(sort(data.meshward.global.grant), sort(data.meshward.agents.grant)),
	array.concat(sort(data.meshward.teams.grant), sort(data.meshward.agent_types.grant)),
)

default allow := false

allow if {
	count(denials) == 0
	count(grants) > 0
}

reasons := denials if {
	count(denials) > 0
} else := [sprintf("no policy layer grants %s access to %s", [caller_label, service_label])]

caller_label := name if {
	name := input.meshward.caller.name
} else := principal if {
	principal := input.attributes.source.principal
} else := "an unidentified caller"

service_label := name if {
	name := input.meshward.service.name
} else := "an unknown service"

decision := {
	"allowed": true,
	"reason": grants[0],
	"grants": grants,
} if {
	allow
} else := {
	"allowed": false,
	"http_status": 403,
	"reason": reasons[0],
	"reasons": reasons,
}
