package meshward.agent_types_test

import data.meshward.agent_types
import data.meshward.fixtures

test_support_agents_never_reach_restricted if {
	agent_types.deny == {"support agents may not reach restricted services (billing-system)"} with input as fixtures.request(fixtures.support_triage, fixtures.billing_system, "GET", "/")
}

test_analysis_agents_may_reach_restricted if {
	count(agent_types.deny) == 0 with input as fixtures.request(fixtures.billing_bot, fixtures.billing_system, "GET", "/")
}

test_type_grant if {
	agent_types.grant == {"support agents may reach support-system"} with input as fixtures.request(fixtures.support_triage, fixtures.support_system, "POST", "/tickets")
	agent_types.grant == {"analysis agents may reach sentiment-analysis"} with input as fixtures.request(fixtures.billing_bot, fixtures.sentiment_analysis, "POST", "/analyze")
}
