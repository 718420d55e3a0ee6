# METADATA
# description: |
#   What a request is and what it needs: the destination service, whether the
#   call is a write, and the permissions it requires. Shared by the layers so
#   each of them reads the request the same way.
package meshward.services

import data.meshward.config

# The destination service (input.meshward.service), when the mesh knows it.
service := s if {
	s := input.meshward.service
	is_object(s)
}

name := service.name

classification := service.metadata.data_classification

method := upper(input.attributes.request.http.method)

# A write is PUT/PATCH/DELETE, or any call to a path with a segment that
# starts with write/update/delete (POST /say-hello is an invoke, not a write).
is_write if method in config.write_methods

is_write if {
	some segment in input.parsed_path
	some prefix in config.write_path_prefixes
	startswith(lower(segment), prefix)
}

# Every call to a skill is an invocation.
action_permissions contains config.permissions.invoke

action_permissions contains config.permissions.write if is_write

# Extra permissions a service demands of every caller (data-driven).
service_permissions contains p if {
	some p in config.services[name].required_permissions
}

# Services any registered agent may call, subject to the deny rules.
is_open if classification in config.open_classifications
