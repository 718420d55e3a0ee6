package meshward.agents_test

import data.meshward.agents
import data.meshward.authz
import data.meshward.fixtures

legacy_crawler := object.union(fixtures.support_triage, {
	"spiffe_id": "spiffe://example.org/agent/legacy-crawler",
	"name": "legacy-crawler",
})

test_suspended_agent_denied if {
	d := authz.decision with input as fixtures.request(legacy_crawler, fixtures.hello_skill, "GET", "/")
	d.allowed == false
	d.reason == "agent legacy-crawler is suspended: retired on 2025-01-31; use support-triage"
}

test_denied_path_prefix if {
	agents.deny == {"agent support-triage may not call paths under /admin"} with input as fixtures.request(fixtures.support_triage, fixtures.hello_skill, "GET", "/admin/users")
	count(agents.deny) == 0 with input as fixtures.request(fixtures.support_triage, fixtures.hello_skill, "GET", "/say-hello")
}

test_per_agent_grant_and_deny if {
	overrides := {"spiffe://example.org/agent/billing-bot": {
		"allowed_services": ["customer-lookup"],
		"denied_services": ["sentiment-analysis"],
	}}
	agents.grant == {"agent billing-bot may reach customer-lookup"} with input as fixtures.request(fixtures.billing_bot, fixtures.customer_lookup, "GET", "/")
		with data.meshward.config.agents as overrides
	d := authz.decision with input as fixtures.request(fixtures.billing_bot, fixtures.sentiment_analysis, "POST", "/analyze")
		with data.meshward.config.agents as overrides
	d.allowed == false
	d.reason == "agent billing-bot may not reach sentiment-analysis"
}

test_agents_without_overrides_unaffected if {
	count(agents.deny) == 0 with input as fixtures.request(fixtures.billing_bot, fixtures.billing_system, "GET", "/")
	count(agents.grant) == 0 with input as fixtures.request(fixtures.billing_bot, fixtures.billing_system, "GET", "/")
}
