# METADATA
# description: |
#   Global layer: what every request is held to, whatever the caller's team,
#   type or name. Identity is the verified peer certificate
#   (attributes.source.principal); registry facts come from input.meshward.
package meshward.global

# Rules of other packages are referenced by their full path, not through an
# import: regorus's Rego VM resolves `alias.rule` by evaluating the whole
# aliased package, which made every request several times slower.

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

precondition_deny contains "destination service is not known to the mesh" if not data.meshward.services.service

precondition_deny contains msg if {
	want := data.meshward.services.service.metadata.environment
	have := object.get(caller.attributes, "environment", "(none)")
	have != want
	msg := sprintf("agent %s is in environment \"%s\" but %s is in \"%s\"", [caller.name, have, data.meshward.services.name, want])
}

# Permissions: the kind of call (invoke, write) and the service itself.
permission_deny contains msg if {
	data.meshward.services.service
	missing := sort([p | some p in data.meshward.services.action_permissions; not p in caller_permissions])
	count(missing) > 0
	msg := sprintf("%s lacks permission %s to %s %s", [caller.name, concat(", ", missing), action_verb, data.meshward.services.name])
}

permission_deny contains msg if {
	missing := sort([p | some p in data.meshward.services.service_permissions; not p in caller_permissions])
	count(missing) > 0
	msg := sprintf("%s requires permission %s, which %s lacks", [data.meshward.services.name, concat(", ", missing), caller.name])
}

action_verb := "write to" if {
	data.meshward.services.is_write
} else := "invoke"

# --- grant ---

grant contains msg if {
	caller
	data.meshward.services.is_open
	msg := sprintf("%s is %s: open to every registered agent", [data.meshward.services.name, data.meshward.services.classification])
}
