"""Checks Kubernetes manifests against the real schemas of their kinds, for
tests/deploy_examples.rs (the examples in deploy/k8s/istio/ and
deploy/k8s/envoy-gateway/).

Which schema, by kind:

- Custom resources (Istio's security.istio.io and telemetry.istio.io, Gateway
  API, Envoy Gateway): the `openAPIV3Schema` of the CRD version that
  `apiVersion` names, from the CRD files scripts/install-schemas.sh copied out
  of the Go modules istio.io/api and github.com/envoyproxy/gateway into the
  schemas directory. They are applied the way the API server applies them with
  strict field validation (`kubectl apply --validate=strict`): an unknown field
  is an error unless `x-kubernetes-preserve-unknown-fields` allows it, schema
  defaults are filled in first, `x-kubernetes-validations` CEL rules are
  evaluated (cel-python, with the Kubernetes string functions it lacks added
  here), `x-kubernetes-list-type` set and map entries must be unique, and
  `metadata` is checked as ObjectMeta. The version must be served and not
  deprecated. Not checked: `format`, transition rules (they need `oldSelf`, an
  update), CEL rules calling functions cel-python does not have (counted in the
  output, never silently passed).
- Built-in kinds (Deployment, Service, NetworkPolicy, ...): kubernetes-validate's
  strict JSON schemas (unknown fields are errors) for the Kubernetes release
  --kubernetes-version names (default K8S_VERSION).
- IstioOperator: `spec.meshConfig` (and the `mesh` key of the `istio`
  ConfigMap) is parsed strictly (protobuf's JSON mapping: an unknown field, a
  wrong type or an unknown enum value is an error) into Istio's MeshConfig
  message, from the descriptor set scripts/install-schemas.sh compiled out of
  istio.io/api's mesh/v1alpha1/config.proto. MeshConfig has no JSON or OpenAPI
  schema; istiod decodes it into the type generated from that file (and, unlike
  this check, drops unknown fields silently). The rest of an IstioOperator has
  no schema outside the istio.io/istio module, so only its apiVersion, kind and
  metadata are checked.

Usage: validate_manifests.py --schemas DIR [--schemas DIR...]
       [--kubernetes-version X.Y.Z] FILE...

Prints one JSON line per YAML document (file, document index, kind, name,
valid, errors, what checked it, CEL rule counts). Exit status: 0 when every
document is valid, 1 when any is not, 2 on a usage or setup error, 3 when a
Python module is missing (a peer to install, not a defect in the manifests).
"""

import argparse
import copy
import json
import os
import re
import sys

try:
    import celpy
    import jsonschema
    import kubernetes_validate
    import yaml
    from celpy import celtypes
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
    from kubernetes_validate import utils as kv_utils
    from referencing import Registry, Resource
except ImportError as e:  # a peer, not a defect
    print(f"missing Python module {e.name} (run scripts/install-python-peers.sh)", file=sys.stderr)
    sys.exit(3)

# The Kubernetes release whose built-in schemas apply (kubernetes-validate
# ships one strict schema set per release).
K8S_VERSION = "1.34.0"
DEFS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = {"$ref": DEFS_ID + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SetupError(Exception):
    pass


# --- CRDs -------------------------------------------------------------------


def load_crds(roots):
    """(apiVersion, kind) -> the CRD version's schema and where it came from."""
    index = {}
    for root in roots:
        index.update(load_crds_under(root))
    if not index:
        raise SetupError(f"no CustomResourceDefinitions under {', '.join(roots)} (run scripts/install-schemas.sh)")
    return index


def load_crds_under(root):
    index = {}
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(dirpath, name)
            with open(path) as f:
                for doc in yaml.load_all(f, Loader=LOADER):
                    if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                        continue
                    spec = doc["spec"]
                    for version in spec["versions"]:
                        key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                        index[key] = {
                            "schema": version["schema"]["openAPIV3Schema"],
                            "served": version.get("served", False),
                            "deprecated": version.get("deprecated", False),
                            "deprecation": version.get("deprecationWarning", ""),
                            "source": os.path.relpath(path, root),
                        }
    return index


def structural(schema, in_junctor=False):
    """An OpenAPI v3 CRD schema as JSON Schema (2020-12) with the API server's
    meaning: objects accept only their declared properties (Kubernetes prunes
    or, with strict validation, rejects the rest) unless
    x-kubernetes-preserve-unknown-fields says otherwise; `nullable` admits null.
    Inside allOf/anyOf/oneOf/not, schemas only constrain values (structural
    schema rules), so no property restriction is added there."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: structural(v, in_junctor) for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(out["additionalProperties"], in_junctor)
    if isinstance(out.get("items"), dict):
        out["items"] = structural(out["items"], in_junctor)
    for junctor in ("allOf", "anyOf", "oneOf"):
        if junctor in out:
            out[junctor] = [structural(s, True) for s in out[junctor]]
    if "not" in out:
        out["not"] = structural(out["not"], True)
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-embedded-resource"):
        props = dict(out.get("properties", {}))
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
        out["properties"] = props
    if (
        out.get("type") == "object"
        and not in_junctor
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema, value):
    """Fills in schema defaults, as the API server does before validating
    (CEL rules see defaulted objects)."""
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name not in value and isinstance(sub, dict) and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in props:
                apply_defaults(props[name], item)
            elif isinstance(extra, dict):
                apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


# --- CEL (x-kubernetes-validations) -----------------------------------------


def _upper_ascii(s):
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in s))


def _lower_ascii(s):
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in s))


def _substring(s, start, end=None):
    return celtypes.StringType(s[int(start):] if end is None else s[int(start):int(end)])


def _split(s, sep, limit=None):
    if limit is None or int(limit) < 0:
        parts = s.split(sep)
    elif int(limit) == 0:
        parts = []
    else:
        parts = s.split(sep, int(limit) - 1)
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


# Kubernetes' CEL string library functions that cel-python lacks.
CEL_FUNCTIONS = {
    "upperAscii": _upper_ascii,
    "lowerAscii": _lower_ascii,
    "substring": _substring,
    "split": _split,
}
CEL_ENV = celpy.Environment()
CEL_PROGRAMS = {}
UNDECLARED = re.compile(r"undeclared reference to '([^']+)'")


class CelStats:
    def __init__(self):
        self.held = 0
        self.failed = 0
        self.transition_skipped = 0
        self.unsupported = []

    def as_json(self):
        return {
            "held": self.held,
            "failed": self.failed,
            "transition_rules_skipped": self.transition_skipped,
            "not_evaluated": self.unsupported,
        }


STATS = CelStats()


def cel_program(text):
    if text not in CEL_PROGRAMS:
        CEL_PROGRAMS[text] = CEL_ENV.program(CEL_ENV.compile(text), functions=CEL_FUNCTIONS)
    return CEL_PROGRAMS[text]


def cel_rules(validator, rules, instance, schema):
    for rule in rules:
        text = rule["rule"]
        if re.search(r"\boldSelf\b", text):
            STATS.transition_skipped += 1
            continue
        try:
            result = cel_program(text).evaluate({"self": celpy.json_to_cel(instance)})
        except Exception as e:  # cel-python raises some errors instead of returning them
            result = e
        if isinstance(result, celtypes.BoolType):
            if result:
                STATS.held += 1
            else:
                STATS.failed += 1
                message = rule.get("message") or f"failed rule: {text}"
                yield jsonschema.ValidationError(f"{message} (CEL: {text})")
            continue
        missing = UNDECLARED.search(str(result))
        if missing and missing.group(1) not in ("self",):
            STATS.unsupported.append(f"{missing.group(1)}: {text}")
            continue
        STATS.failed += 1
        yield jsonschema.ValidationError(f"CEL rule {text!r} did not evaluate: {result}")


def list_type(validator, kind, instance, schema):
    if not isinstance(instance, list):
        return
    if kind == "set":
        seen = []
        for i, item in enumerate(instance):
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate entry {item!r} in a list of type set", path=[i])
            seen.append(item)
    elif kind == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = {}
        for i, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(
                    f"entries {seen[key]} and {i} have the same {', '.join(keys)} in a list of type map",
                    path=[i],
                )
            seen[key] = i


CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    {"x-kubernetes-validations": cel_rules, "x-kubernetes-list-type": list_type},
)


# --- built-in kinds (kubernetes-validate) -------------------------------------


class BuiltIns:
    def __init__(self, version):
        versions = [v for v in kv_utils.all_versions() if v == version]
        if not versions:
            raise SetupError(f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for Kubernetes {version}")
        self.version = version
        self.dir = f"kubernetes-json-schema/v{version}-local-strict"
        self.defs = kv_utils.schema_contents(f"{self.dir}/_definitions.json", version)
        self.registry = Resource.from_contents(self.defs) @ Registry()
        self.label = f"Kubernetes {version} strict (kubernetes-validate {kubernetes_validate.__version__})"

    def schema(self, api_version, kind):
        # kubernetes-validate's file names: <kind>-<group's first label>-<version>.json
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            return kv_utils.schema_contents(f"{self.dir}/{kind.lower()}-{group_version}.json", self.version)
        except FileNotFoundError:
            return None

    def validator(self, schema, cls=jsonschema.Draft202012Validator):
        # kubernetes-validate's schemas refer to its definitions by URL
        # (relative to their $id); the CRD schemas built here by DEFS_ID.
        return cls(schema, registry=self.registry)


# --- documents ---------------------------------------------------------------


def schema_errors(validator, instance):
    """Every error, as "<path>: <message>", in document order of paths."""
    found = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(document)'}: {e.message}" for e in found]


def name_errors(doc):
    """Every example must be applicable as is: it names itself."""
    meta = doc.get("metadata")
    return ["metadata.name: required"] if isinstance(meta, dict) and not meta.get("name") else []


class MeshConfig:
    """Istio's MeshConfig message, from the descriptor set under the schemas
    directory."""

    NAME = "istio.mesh.v1alpha1.MeshConfig"

    def __init__(self, roots):
        found = []
        for root in roots:
            for dirpath, _, files in os.walk(root):
                found += [(root, os.path.join(dirpath, f)) for f in files if f == "mesh-config.binpb"]
        if len(found) != 1:
            raise SetupError(f"expected one mesh-config.binpb under {', '.join(roots)}, found {len(found)} (run scripts/install-schemas.sh)")
        root, found = found[0][0], [found[0][1]]
        with open(found[0], "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
        pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            pool.Add(file)
        self.message = message_factory.GetMessageClass(pool.FindMessageTypeByName(self.NAME))
        self.label = f"{self.NAME} ({os.path.relpath(found[0], root)})"

    def check(self, mesh, where, errors):
        if not isinstance(mesh, dict):
            errors.append(f"{where}: not a mapping")
            return
        try:
            json_format.ParseDict(mesh, self.message(), ignore_unknown_fields=False)
        except json_format.ParseError as e:
            errors.append(f"{where}: {' '.join(str(e).split())}")


def check_document(doc, crds, k8s, mesh):
    """(errors, what checked it) for one document."""
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind are required strings"], []
    errors, checked_by = name_errors(doc), []

    if (api_version, kind) == ("install.istio.io/v1alpha1", "IstioOperator"):
        meta_schema = {"type": "object", "required": ["metadata"], "properties": {"metadata": OBJECT_META}}
        errors += schema_errors(k8s.validator(meta_schema), doc)
        checked_by.append(f"metadata: ObjectMeta ({k8s.label})")
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            errors.append("spec: required mapping")
        elif "meshConfig" in spec:
            mesh.check(spec["meshConfig"], "spec.meshConfig", errors)
            checked_by.append(f"spec.meshConfig: {mesh.label}")
        return errors, checked_by

    crd = crds.get((api_version, kind))
    if crd is not None:
        if not crd["served"]:
            errors.append(f"apiVersion: {api_version} {kind} is not served ({crd['source']})")
        if crd["deprecated"]:
            errors.append(f"apiVersion: {api_version} {kind} is deprecated: {crd['deprecation']}")
        schema = structural(crd["schema"])
        # Every object has these, whether or not the CRD's schema lists them.
        props = dict(schema.get("properties", {}))
        props.update({"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": OBJECT_META})
        schema["properties"] = props
        schema["required"] = sorted(set(schema.get("required", [])) | {"metadata"})
        instance = copy.deepcopy(doc)
        apply_defaults(crd["schema"], instance)
        errors += schema_errors(k8s.validator(schema, CrdValidator), instance)
        checked_by.append(f"CRD {api_version} {kind} ({crd['source']}); metadata: ObjectMeta ({k8s.label})")
        return errors, checked_by

    schema = k8s.schema(api_version, kind)
    if schema is None:
        errors.append(
            f"no schema for {api_version} {kind}: neither a CRD under the schemas directory"
            f" nor a built-in kind of Kubernetes {k8s.version}"
        )
        return errors, checked_by
    errors += schema_errors(k8s.validator(schema), doc)
    checked_by.append(f"{api_version} {kind} ({k8s.label})")
    if (api_version, kind) == ("v1", "ConfigMap") and (doc.get("metadata") or {}).get("name") == "istio":
        text = (doc.get("data") or {}).get("mesh")
        if isinstance(text, str):
            mesh.check(yaml.safe_load(text), "data.mesh", errors)
            checked_by.append(f"data.mesh: {mesh.label}")
    return errors, checked_by


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", required=True, action="append",
                        help="directory of CRD files (scripts/install-schemas.sh, or CRDs vendored under deploy/); repeatable")
    parser.add_argument("--kubernetes-version", default=K8S_VERSION,
                        help=f"the Kubernetes release whose built-in schemas apply (default {K8S_VERSION})")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    global STATS
    try:
        crds = load_crds(args.schemas)
        k8s = BuiltIns(args.kubernetes_version)
        mesh = MeshConfig(args.schemas)
        all_valid = True
        for path in args.files:
            try:
                with open(path) as f:
                    docs = list(yaml.load_all(f, Loader=LOADER))
            except yaml.YAMLError as e:
                all_valid = False
                print(json.dumps({"file": path, "document": None, "valid": False, "errors": [f"YAML: {e}"]}))
                continue
            for index, doc in enumerate(docs):
                if doc is None:
                    continue
                STATS = CelStats()
                if not isinstance(doc, dict):
                    errors, checked_by = ["not a mapping"], []
                else:
                    errors, checked_by = check_document(doc, crds, k8s, mesh)
                meta = doc.get("metadata") if isinstance(doc, dict) else None
                meta = meta if isinstance(meta, dict) else {}
                name = "/".join(str(p) for p in (meta.get("namespace"), meta.get("name")) if p)
                all_valid &= not errors
                print(json.dumps({
                    "file": path,
                    "document": index,
                    "kind": f"{doc.get('apiVersion')} {doc.get('kind')}" if isinstance(doc, dict) else None,
                    "name": name,
                    "valid": not errors,
                    "errors": errors,
                    "checked_by": checked_by,
                    "cel": STATS.as_json(),
                }), flush=True)
    except (SetupError, OSError) as e:
        print(f"setup: {e}", file=sys.stderr)
        return 2
    return 0 if all_valid else 1


if __name__ == "__main__":
    sys.exit(main())
