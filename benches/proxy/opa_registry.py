#!/usr/bin/env python3
"""The registry opa-envoy-plugin's adapter reads, from a mesh file.

  opa_registry.py <mesh.yaml>

Prints {"parity_registry": {...}}: agents by SPIFFE ID (spiffe_id, name,
attributes, permissions) and services by name (name, spiffe_id, metadata),
the shapes of input.meshward.caller / input.meshward.service, as
benches/ext_authz.rs (registry_of) and tests/ext_authz_parity.rs write it.
tests/fixtures/ext_authz/adapter looks the caller and the service up in it.
"""

import json
import sys

import yaml


def registry(mesh):
    agents = {
        a["spiffe_id"]: {
            "spiffe_id": a["spiffe_id"],
            "name": a["name"],
            "attributes": a.get("attributes") or {},
            "permissions": a.get("permissions") or [],
        }
        for a in mesh.get("agents") or []
    }
    services = {
        s["name"]: {
            "name": s["name"],
            "spiffe_id": s["spiffe_id"],
            "metadata": s.get("metadata") or {},
        }
        for s in mesh.get("services") or []
    }
    return {"trust_domain": mesh["trust_domain"], "agents": agents, "services": services}


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        mesh = yaml.safe_load(f)
    json.dump({"parity_registry": registry(mesh)}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
