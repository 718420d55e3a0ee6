package meshward.teams_test

import data.meshward.fixtures
import data.meshward.teams

test_customer_success_may_not_reach_billing if {
	teams.deny == {"customer-success agents may not reach billing-system"} with input as fixtures.request(fixtures.support_triage, fixtures.billing_system, "GET", "/")
}

test_finance_may_reach_billing if {
	count(teams.deny) == 0 with input as fixtures.request(fixtures.billing_bot, fixtures.billing_system, "GET", "/")
	"finance agents may reach billing-system" in teams.grant with input as fixtures.request(fixtures.billing_bot, fixtures.billing_system, "GET", "/")
}

test_team_reaches_own_services if {
	"customer-lookup is owned by the caller's team customer-success" in teams.grant with input as fixtures.request(fixtures.support_triage, fixtures.customer_lookup, "GET", "/customers/1")
}

test_other_team_not_granted if {
	count(teams.grant) == 0 with input as fixtures.request(fixtures.billing_bot, fixtures.customer_lookup, "GET", "/customers/1")
}

test_team_rules_are_data if {
	count(teams.deny) == 0 with input as fixtures.request(fixtures.support_triage, fixtures.billing_system, "GET", "/")
		with data.meshward.config.teams as {}
}
