# METADATA
# description: |
#   Team layer: which services an agent's team (registry attribute "team")
#   may or may not reach. A team always reaches the services it owns
#   (service metadata "team").
package meshward.teams

import data.meshward.config
import data.meshward.services

team := input.meshward.caller.attributes.team

deny contains msg if {
	services.name in config.teams[team].denied_services
	msg := sprintf("%s agents may not reach %s", [team, services.name])
}

grant contains msg if {
	team == services.service.metadata.team
	msg := sprintf("%s is owned by the caller's team %s", [services.name, team])
}

grant contains msg if {
	services.name in config.teams[team].allowed_services
	msg := sprintf("%s agents may reach %s", [team, services.name])
}
