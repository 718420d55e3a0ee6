# METADATA
# description: |
#   MCP layer: what an agent may do inside a `protocol: mcp` service, one
#   JSON-RPC message at a time. The dataplane parses the message strictly
#   and puts it in input.meshward.mcp (kind, method, id, tool, arguments,
#   resource, prompt); a batch is judged message by message.
#
#   Tool calls are denied unless data.meshward.config.mcp names the caller
#   for that tool, and then only within the tool's argument caps. Reading a
#   resource or getting a prompt needs the same kind of grant. Methods this
#   layer does not know are denied: a new protocol feature is opened on
#   purpose, not by default. Requests that are not MCP messages are left to
#   the other layers.
package meshward.mcp

import data.meshward.config

message := m if {
	m := input.meshward.mcp
	is_object(m)
}

service := input.meshward.service.name

# Read field by field (not through object.get on input.meshward), so the
# bundle reads only the input fields its decision cache declares.
caller := id if {
	id := input.meshward.caller.spiffe_id
} else := "an unregistered caller"

caller_name := name if {
	name := input.meshward.caller.name
} else := caller

tools := object.get(config, ["mcp", service, "tools"], {})

# Protocol housekeeping and listings: allowed for any caller the service
# layers let in (tools/list answers can be filtered per tool by the
# dataplane, with this same policy).
open_methods := {
	"initialize",
	"ping",
	"tools/list",
	"resources/list",
	"resources/templates/list",
	"prompts/list",
	"completion/complete",
	"logging/setLevel",
	"notifications/initialized",
	"notifications/cancelled",
	"notifications/progress",
	"notifications/roots/list_changed",
}

deny contains msg if {
	message.kind != "response"
	not message.method in open_methods
	not message.method in {"tools/call", "resources/read", "prompts/get"}
	msg := sprintf("MCP method %s is not allowed on %s", [message.method, service])
}

deny contains msg if {
	message.method == "tools/call"
	not caller in object.get(tools, [message.tool, "callers"], [])
	msg := sprintf("%s may not call tool %s of %s", [caller_name, message.tool, service])
}

# Argument caps: a capped argument, when present, must be a number within
# the cap (a string "1000" is not a number the policy can compare).
deny contains msg if {
	message.method == "tools/call"
	some name, cap in object.get(tools, [message.tool, "max_arguments"], {})
	value := message.arguments[name]
	not within(value, cap)
	msg := sprintf("argument %s of tool %s must be a number at most %v", [name, message.tool, cap])
}

within(value, cap) if {
	is_number(value)
	value <= cap
}

deny contains msg if {
	message.method == "resources/read"
	not caller in object.get(config, ["mcp", service, "resources", message.resource, "callers"], [])
	msg := sprintf("%s may not read resource %s of %s", [caller_name, message.resource, service])
}

deny contains msg if {
	message.method == "prompts/get"
	not caller in object.get(config, ["mcp", service, "prompts", message.prompt, "callers"], [])
	msg := sprintf("%s may not get prompt %s of %s", [caller_name, message.prompt, service])
}
