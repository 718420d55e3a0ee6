# METADATA
# description: |
#   Agent-type layer: defaults per kind of agent (registry attribute "type"),
#   e.g. support agents never touch restricted data.
package meshward.agent_types

import data.meshward.config
import data.meshward.services

agent_type := input.meshward.caller.attributes.type

deny contains msg if {
	services.classification in config.agent_types[agent_type].denied_classifications
	msg := sprintf("%s agents may not reach %s services (%s)", [agent_type, services.classification, services.name])
}

grant contains msg if {
	services.name in config.agent_types[agent_type].allowed_services
	msg := sprintf("%s agents may reach %s", [agent_type, services.name])
}
