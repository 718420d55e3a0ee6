# METADATA
# description: |
#   Agent-type layer: defaults per kind of agent (registry attribute "type"),
#   e.g. support agents never touch restricted data.
package meshward.agent_types

import data.meshward.config

# data.meshward.services is referenced by its full path: see authz.rego.

agent_type := input.meshward.caller.attributes.type

deny contains msg if {
	data.meshward.services.classification in config.agent_types[agent_type].denied_classifications
	msg := sprintf("%s agents may not reach %s services (%s)", [agent_type, data.meshward.services.classification, data.meshward.services.name])
}

grant contains msg if {
	data.meshward.services.name in config.agent_types[agent_type].allowed_services
	msg := sprintf("%s agents may reach %s", [agent_type, data.meshward.services.name])
}
