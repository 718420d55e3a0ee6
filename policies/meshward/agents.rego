# METADATA
# description: |
#   Agent layer: overrides for individual agents, keyed by SPIFFE ID in
#   data.meshward.config.agents. Use sparingly; prefer team and type rules.
package meshward.agents

import data.meshward.config

spiffe_id := input.attributes.source.principal

entry := config.agents[spiffe_id]

name := n if {
	n := input.meshward.caller.name
} else := spiffe_id

deny contains msg if {
	is_string(entry.suspended)
	msg := sprintf("agent %s is suspended: %s", [name, entry.suspended])
}

deny contains msg if {
	input.meshward.service.name in entry.denied_services
	msg := sprintf("agent %s may not reach %s", [name, input.meshward.service.name])
}

deny contains msg if {
	path := input.attributes.request.http.path
	some prefix in entry.denied_path_prefixes
	startswith(path, prefix)
	msg := sprintf("agent %s may not call paths under %s", [name, prefix])
}

grant contains msg if {
	input.meshward.service.name in entry.allowed_services
	msg := sprintf("agent %s may reach %s", [name, input.meshward.service.name])
}
