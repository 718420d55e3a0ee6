# METADATA
# description: |
#   Team layer: which services an agent's team (registry attribute "team")
#   may or may not reach. A team always reaches the services it owns
#   (service metadata "team").
package meshward.teams

import data.meshward.config

# data.meshward.services is referenced by its full path: see authz.rego.

team := input.meshward.caller.attributes.team

deny contains msg if {
	data.meshward.services.name in config.teams[team].denied_services
	msg := sprintf("%s agents may not reach %s", [team, data.meshward.services.name])
}

grant contains msg if {
	team == data.meshward.services.service.metadata.team
	msg := sprintf("%s is owned by the caller's team %s", [data.meshward.services.name, team])
}

grant contains msg if {
	data.meshward.services.name in config.teams[team].allowed_services
	msg := sprintf("%s agents may reach %s", [team, data.meshward.services.name])
}
