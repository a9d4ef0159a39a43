#!/usr/bin/env python3
"""Validates FHIR R4 resources with an independent validator (PyPI fhir.resources,
R4B models: structure, cardinality, types), plus two R4 rules those models do not
enforce: ImagingStudy.status from its required value set, and a timezone on every
dateTime/instant that carries a time.

Reads a JSON array of resources on stdin; prints one line per problem; exit 1 if any.
"""
import importlib
import json
import re
import sys

STATUSES = {"registered", "available", "cancelled", "entered-in-error", "unknown"}
DATETIME_WITH_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T")
DATETIME_FIELDS = {"started", "lastUpdated", "transactionTime", "date", "issued", "effectiveDateTime", "authoredOn", "recorded"}


def model(resource_type):
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    return getattr(module, resource_type)


def extra_checks(node, path, problems):
    if isinstance(node, dict):
        if node.get("resourceType") == "ImagingStudy" and node.get("status") not in STATUSES:
            problems.append(f"{path}.status: {node.get('status')!r} is not in the ImagingStudy status value set")
        for key, value in node.items():
            if key in DATETIME_FIELDS and isinstance(value, str) and DATETIME_WITH_TIME.match(value):
                if not re.search(r"(Z|[+-]\d{2}:\d{2})$", value):
                    problems.append(f"{path}.{key}: {value!r} has a time but no timezone")
            extra_checks(value, f"{path}.{key}", problems)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            extra_checks(item, f"{path}[{i}]", problems)


def main():
    resources = json.load(sys.stdin)
    problems = []
    for i, resource in enumerate(resources):
        kind = resource.get("resourceType", "?")
        try:
            model(kind).parse_obj(resource)
        except Exception as error:  # noqa: BLE001 - report every validation failure
            problems.append(f"[{i}] {kind}: {error}".replace("\n", " | "))
        extra_checks(resource, f"[{i}] {kind}", problems)
    for p in problems:
        print(p)
    print(f"validated {len(resources)} resource(s), {len(problems)} problem(s)", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
