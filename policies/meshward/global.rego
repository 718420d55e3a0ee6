# METADATA
# description: |
#   Global layer: what every request is held to, whatever the caller's team,
#   type or name. Identity is the verified peer certificate
#   (attributes.source.principal); registry facts come from input.meshward.
package meshward.global

import data.meshward.services

principal := p if {
	p := input.attributes.source.principal
	is_string(p)
	p != ""
}

caller := c if {
	c := input.meshward.caller
	is_object(c)
}

caller_permissions := {p | some p in caller.permissions}

# --- deny ---

# Everything this layer denies. authz.rego reports preconditions first and
# missing permissions last, after the other layers' explicit prohibitions,
# because a named prohibition explains a denial better than the permissions
# it also happens to lack.
deny := precondition_deny | permission_deny

# Preconditions: who is calling, to what, from which environment.
precondition_deny contains "request has no verified SPIFFE identity" if not principal

precondition_deny contains msg if {
	not caller
	msg := sprintf("%s is not a registered agent", [principal])
}

precondition_deny contains msg if {
	caller.spiffe_id != principal
	msg := sprintf("registry entry %s does not match the verified identity %s", [caller.spiffe_id, principal])
}

precondition_deny contains "destination service is not known to the mesh" if not services.service

precondition_deny contains msg if {
	want := services.service.metadata.environment
	have := object.get(caller.attributes, "environment", "(none)")
	have != want
	msg := sprintf("agent %s is in environment \"%s\" but %s is in \"%s\"", [caller.name, have, services.name, want])
}

# Permissions: the kind of call (invoke, write) and the service itself.
permission_deny contains msg if {
	services.service
	missing := sort([p | some p in services.action_permissions; not p in caller_permissions])
	count(missing) > 0
	msg := sprintf("%s lacks permission %s to %s %s", [caller.name, concat(", ", missing), action_verb, services.name])
}

permission_deny contains msg if {
	missing := sort([p | some p in services.service_permissions; not p in caller_permissions])
	count(missing) > 0
	msg := sprintf("%s requires permission %s, which %s lacks", [services.name, concat(", ", missing), caller.name])
}

action_verb := "write to" if {
	services.is_write
} else := "invoke"

# --- grant ---

grant contains msg if {
	caller
	services.is_open
	msg := sprintf("%s is %s: open to every registered agent", [services.name, services.classification])
}
