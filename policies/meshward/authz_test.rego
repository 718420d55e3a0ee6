# Tests of the entry point: the demo's scenarios end to end, the decision
# object's shape, and deny-overrides-allow across layers.
package meshward.authz_test

import data.meshward.authz
import data.meshward.fixtures

test_support_triage_may_invoke_hello_skill if {
	d := authz.decision with input as fixtures.request(fixtures.support_triage, fixtures.hello_skill, "POST", "/say-hello")
	d.allowed == true
	d.reason == "hello-skill is public: open to every registered agent"
	authz.allow with input as fixtures.request(fixtures.support_triage, fixtures.hello_skill, "POST", "/say-hello")
}

test_support_triage_denied_billing_system if {
	d := authz.decision with input as fixtures.request(fixtures.support_triage, fixtures.billing_system, "GET", "/invoices")
	d.allowed == false
	d.http_status == 403
	d.reason == "customer-success agents may not reach billing-system"
	not authz.allow with input as fixtures.request(fixtures.support_triage, fixtures.billing_system, "GET", "/invoices")
}

test_billing_bot_may_reach_billing_system if {
	d := authz.decision with input as fixtures.request(fixtures.billing_bot, fixtures.billing_system, "POST", "/invoices/lookup")
	d.allowed == true
	"finance agents may reach billing-system" in d.grants
}

test_outbound_direction_same_answer if {
	inbound := fixtures.request(fixtures.support_triage, fixtures.billing_system, "GET", "/invoices")
	outbound := object.union(inbound, {"meshward": {"direction": "outbound"}})
	d := authz.decision with input as outbound
	d.reason == "customer-success agents may not reach billing-system"
}

test_no_identity_denied if {
	req := fixtures.request(fixtures.support_triage, fixtures.hello_skill, "GET", "/")
	no_identity := object.union(req, {"attributes": {"source": {"principal": ""}}, "meshward": {"caller": null}})
	d := authz.decision with input as no_identity
	d.allowed == false
	d.reason == "request has no verified SPIFFE identity"
}

test_empty_input_denied if {
	d := authz.decision with input as {}
	d.allowed == false
	d.http_status == 403
	not authz.allow with input as {}
}

test_unregistered_caller_denied if {
	req := fixtures.request(fixtures.support_triage, fixtures.hello_skill, "GET", "/")
	unknown := object.union(req, {
		"attributes": {"source": {"principal": "spiffe://example.org/agent/stranger"}},
		"meshward": {"caller": null},
	})
	d := authz.decision with input as unknown
	d.allowed == false
	d.reason == "spiffe://example.org/agent/stranger is not a registered agent"
}

test_no_grant_denied_with_reason if {
	# billing-bot holds no data:read, and nothing grants finance the
	# confidential customer-lookup: both show up, the permission first.
	d := authz.decision with input as fixtures.request(fixtures.billing_bot, fixtures.customer_lookup, "GET", "/customers/42")
	d.allowed == false
	d.reason == "customer-lookup requires permission data:read, which billing-bot lacks"
}

test_nothing_grants if {
	d := authz.decision with input as fixtures.request(fixtures.billing_bot, fixtures.customer_lookup, "GET", "/customers/42")
		with data.meshward.config.services as {}
	d.allowed == false
	d.reason == "no policy layer grants billing-bot access to customer-lookup"
}

test_deny_overrides_grant if {
	# hello-skill is open (global grant) but an agent-level deny still wins.
	d := authz.decision with input as fixtures.request(fixtures.support_triage, fixtures.hello_skill, "GET", "/admin/reset")
	d.allowed == false
	d.reason == "agent support-triage may not call paths under /admin"
}
