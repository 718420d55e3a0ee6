# METADATA
# description: |
#   Shared fixtures for the bundle's tests: the demo mesh's agents and
#   services (deploy/local/mesh.yaml) and a builder for input documents shaped
#   like the ones the dataplane sends.
package meshward.fixtures

support_triage := {
	"spiffe_id": "spiffe://example.org/agent/support-triage",
	"name": "support-triage",
	"attributes": {"team": "customer-success", "type": "support", "environment": "production"},
	"permissions": ["skills:invoke", "data:read"],
}

billing_bot := {
	"spiffe_id": "spiffe://example.org/agent/billing-bot",
	"name": "billing-bot",
	"attributes": {"team": "finance", "type": "analysis", "environment": "production"},
	"permissions": ["skills:invoke", "billing:read", "finance:access"],
}

staging_bot := {
	"spiffe_id": "spiffe://example.org/agent/staging-bot",
	"name": "staging-bot",
	"attributes": {"team": "customer-success", "type": "support", "environment": "staging"},
	"permissions": ["skills:invoke", "data:read"],
}

hello_skill := service("hello-skill", "platform", "public")

sentiment_analysis := service("sentiment-analysis", "ml", "internal")

customer_lookup := service("customer-lookup", "customer-success", "confidential")

support_system := service("support-system", "customer-success", "internal")

billing_system := service("billing-system", "finance", "restricted")

service(name, team, classification) := {
	"name": name,
	"spiffe_id": sprintf("spiffe://example.org/service/%s", [name]),
	"metadata": {"team": team, "environment": "production", "data_classification": classification},
}

# An inbound request from `caller` (verified principal = its SPIFFE ID) to
# `svc`; the path is what the service sees (routing prefix stripped).
request(caller, svc, method, path) := {
	"attributes": {
		"source": {"principal": caller.spiffe_id},
		"destination": {"principal": svc.spiffe_id},
		"request": {"http": {
			"id": "test",
			"method": method,
			"path": path,
			"host": svc.name,
			"scheme": "https",
			"protocol": "HTTP/1.1",
			"headers": {"content-type": "application/json"},
		}},
	},
	"parsed_path": split(trim_left(split(path, "?")[0], "/"), "/"),
	"parsed_query": {},
	"truncated_body": false,
	"version": {"encoding": "protojson", "ext_authz": "v3"},
	"meshward": {"direction": "inbound", "caller": caller, "service": svc},
}
