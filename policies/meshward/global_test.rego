package meshward.global_test

import data.meshward.fixtures
import data.meshward.global

test_open_service_granted if {
	global.grant == {"sentiment-analysis is internal: open to every registered agent"} with input as fixtures.request(fixtures.billing_bot, fixtures.sentiment_analysis, "POST", "/analyze")
	count(global.deny) == 0 with input as fixtures.request(fixtures.billing_bot, fixtures.sentiment_analysis, "POST", "/analyze")
}

test_restricted_service_not_granted_globally if {
	count(global.grant) == 0 with input as fixtures.request(fixtures.billing_bot, fixtures.billing_system, "GET", "/")
}

test_environment_mismatch_denied if {
	msg := "agent staging-bot is in environment \"staging\" but hello-skill is in \"production\""
	msg in global.deny with input as fixtures.request(fixtures.staging_bot, fixtures.hello_skill, "POST", "/say-hello")
}

test_missing_environment_denied if {
	no_attributes := object.remove(fixtures.support_triage, ["attributes"])
	caller := object.union(no_attributes, {"attributes": {"team": "customer-success"}})
	msg := "agent support-triage is in environment \"(none)\" but hello-skill is in \"production\""
	msg in global.deny with input as fixtures.request(caller, fixtures.hello_skill, "POST", "/say-hello")
}

test_unknown_service_denied if {
	req := fixtures.request(fixtures.support_triage, fixtures.hello_skill, "GET", "/")
	unknown := object.union(req, {"meshward": {"service": null}})
	"destination service is not known to the mesh" in global.deny with input as unknown
}

test_registry_mismatch_denied if {
	req := fixtures.request(fixtures.support_triage, fixtures.hello_skill, "GET", "/")
	spoofed := object.union(req, {"attributes": {"source": {"principal": "spiffe://example.org/agent/other"}}})
	msg := "registry entry spiffe://example.org/agent/support-triage does not match the verified identity spiffe://example.org/agent/other"
	msg in global.deny with input as spoofed
}

test_invoke_needs_skills_invoke if {
	caller := object.union(fixtures.support_triage, {"permissions": ["data:read"]})
	"support-triage lacks permission skills:invoke to invoke hello-skill" in global.deny with input as fixtures.request(caller, fixtures.hello_skill, "GET", "/")
}

test_post_is_invoke_not_write if {
	count(global.deny) == 0 with input as fixtures.request(fixtures.support_triage, fixtures.hello_skill, "POST", "/say-hello")
}

test_put_needs_data_write if {
	"support-triage lacks permission data:write to write to hello-skill" in global.deny with input as fixtures.request(fixtures.support_triage, fixtures.hello_skill, "PUT", "/greeting")
}

test_write_path_needs_data_write if {
	"support-triage lacks permission data:write to write to support-system" in global.deny with input as fixtures.request(fixtures.support_triage, fixtures.support_system, "POST", "/tickets/update-status")
}

test_write_allowed_with_data_write if {
	caller := object.union(fixtures.support_triage, {"permissions": ["skills:invoke", "data:read", "data:write"]})
	count(global.deny) == 0 with input as fixtures.request(caller, fixtures.support_system, "DELETE", "/tickets/1")
}

test_service_permissions_required if {
	"billing-system requires permission billing:read, finance:access, which support-triage lacks" in global.deny with input as fixtures.request(fixtures.support_triage, fixtures.billing_system, "GET", "/")
	count(global.deny) == 0 with input as fixtures.request(fixtures.billing_bot, fixtures.billing_system, "GET", "/")
}
