package meshward.mcp_test

import data.meshward.authz
import data.meshward.fixtures
import data.meshward.mcp

# An MCP message POSTed to `svc`'s endpoint, as the dataplane adds it.
call(caller, svc, message) := object.union(
	fixtures.request(caller, svc, "POST", "/mcp"),
	{"meshward": {"mcp": message}},
)

tool_call(name, arguments) := {
	"kind": "request",
	"method": "tools/call",
	"id": 1,
	"tool": name,
	"arguments": arguments,
}

test_support_triage_may_get_a_customer if {
	d := authz.decision with input as call(fixtures.support_triage, fixtures.customer_lookup, tool_call("get_customer", {"id": "c-1001"}))
	d.allowed == true
}

test_support_triage_may_not_delete_a_customer if {
	d := authz.decision with input as call(fixtures.support_triage, fixtures.customer_lookup, tool_call("delete_customer", {"id": "c-1001"}))
	d.allowed == false
	d.reason == "support-triage may not call tool delete_customer of customer-lookup"
}

test_billing_bot_may_list_invoices if {
	d := authz.decision with input as call(fixtures.billing_bot, fixtures.billing_system, tool_call("list_invoices", {"customer_id": "c-1001"}))
	d.allowed == true
}

test_refund_arguments_are_capped if {
	small := call(fixtures.billing_bot, fixtures.billing_system, tool_call("refund_invoice", {"invoice_id": "i-1", "amount": 40}))
	authz.decision.allowed with input as small
	big := call(fixtures.billing_bot, fixtures.billing_system, tool_call("refund_invoice", {"invoice_id": "i-1", "amount": 400}))
	mcp.deny == {"argument amount of tool refund_invoice must be a number at most 100"} with input as big
	as_text := call(fixtures.billing_bot, fixtures.billing_system, tool_call("refund_invoice", {"amount": "40"}))
	count(mcp.deny) == 1 with input as as_text
}

test_another_agent_cannot_use_a_granted_tool if {
	d := authz.decision with input as call(fixtures.billing_bot, fixtures.customer_lookup, tool_call("get_customer", {}))
	d.allowed == false
	"billing-bot may not call tool get_customer of customer-lookup" in d.reasons
}

test_housekeeping_and_listings_are_open if {
	every method in ["initialize", "tools/list", "notifications/initialized", "ping"] {
		count(mcp.deny) == 0 with input as call(fixtures.support_triage, fixtures.customer_lookup, {"kind": "request", "method": method, "id": 2})
	}
	count(mcp.deny) == 0 with input as call(fixtures.support_triage, fixtures.customer_lookup, {"kind": "response", "id": 7})
}

test_unknown_methods_resources_and_prompts_are_closed if {
	mcp.deny == {"MCP method sampling/createMessage is not allowed on customer-lookup"} with input as call(fixtures.support_triage, fixtures.customer_lookup, {"kind": "request", "method": "sampling/createMessage", "id": 3})
	mcp.deny == {"support-triage may not read resource file:///etc/passwd of customer-lookup"} with input as call(fixtures.support_triage, fixtures.customer_lookup, {"kind": "request", "method": "resources/read", "id": 4, "resource": "file:///etc/passwd"})
	grant := {"customer-lookup": {"prompts": {"summary": {"callers": [fixtures.support_triage.spiffe_id]}}}}
	count(mcp.deny) == 0 with input as call(fixtures.support_triage, fixtures.customer_lookup, {"kind": "request", "method": "prompts/get", "id": 5, "prompt": "summary"})
		with data.meshward.config.mcp as grant
}

test_plain_requests_are_left_to_the_other_layers if {
	count(mcp.deny) == 0 with input as fixtures.request(fixtures.support_triage, fixtures.customer_lookup, "GET", "/customers/c-1001")
}
