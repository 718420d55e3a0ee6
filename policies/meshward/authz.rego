# METADATA
# description: |
#   Entry point of the reference bundle. The decision rule is
#   data.meshward.authz.decision (opa-envoy-plugin's object form plus
#   "reason"); data.meshward.authz.allow is the same answer as a bool.
#
#   Layers, as in a layered OPA setup: global, teams, agent_types, agents.
#   Any deny from any layer wins; otherwise at least one layer must grant.
#   The same policy runs on the caller's sidecar (outbound), the service's
#   sidecar (inbound) and behind Envoy's ext_authz: only
#   input.meshward.direction differs.
package meshward.authz

import data.meshward.agent_types
import data.meshward.agents
import data.meshward.global
import data.meshward.teams

# Denials, headline first: preconditions (identity, registration, service,
# environment), then explicit prohibitions from the most specific layer to
# the least, then missing permissions.
denials := array.concat(
	array.concat(sort(global.precondition_deny), sort(agents.deny)),
	array.concat(
		array.concat(sort(teams.deny), sort(agent_types.deny)),
		sort(global.permission_deny),
	),
)

grants := array.concat(
	array.concat(sort(global.grant), sort(agents.grant)),
	array.concat(sort(teams.grant), sort(agent_types.grant)),
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
