"""JSON schemas written from the specifications, to check kiln's statements against them.

- in-toto Statement v1: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
  (``_type``, ``subject`` of ResourceDescriptors with ``name`` and a non-empty ``digest`` map,
  ``predicateType`` a URI, ``predicate`` an object).
- SLSA provenance v1: https://slsa.dev/provenance/v1 (``buildDefinition`` with ``buildType`` and
  ``externalParameters`` required; ``runDetails`` with ``builder.id`` required; timestamps RFC
  3339; ResourceDescriptors need one of ``uri``, ``digest``, ``content``).
"""

from __future__ import annotations

from typing import Any

_DIGEST_SET: dict[str, Any] = {
    "type": "object", "minProperties": 1,
    "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]+$"},
}

_RESOURCE_DESCRIPTOR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "uri": {"type": "string", "minLength": 1},
        "digest": _DIGEST_SET,
        "name": {"type": "string"},
        "downloadLocation": {"type": "string"},
        "mediaType": {"type": "string"},
        "content": {"type": "string"},
        "annotations": {"type": "object"},
    },
    "anyOf": [{"required": ["uri"]}, {"required": ["digest"]}, {"required": ["content"]}],
}

_TIMESTAMP: dict[str, Any] = {
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
}

STATEMENT_V1: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["_type", "subject", "predicateType", "predicate"],
    "properties": {
        "_type": {"const": "https://in-toto.io/Statement/v1"},
        "subject": {
            "type": "array", "minItems": 1,
            "items": {"type": "object", "required": ["digest"],
                      "properties": {"name": {"type": "string"}, "digest": _DIGEST_SET}},
        },
        "predicateType": {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*:"},
        "predicate": {"type": "object"},
    },
}

SLSA_PROVENANCE_V1: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["buildDefinition", "runDetails"],
    "properties": {
        "buildDefinition": {
            "type": "object",
            "required": ["buildType", "externalParameters"],
            "properties": {
                "buildType": {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*:"},
                "externalParameters": {"type": "object"},
                "internalParameters": {"type": "object"},
                "resolvedDependencies": {"type": "array", "items": _RESOURCE_DESCRIPTOR},
            },
        },
        "runDetails": {
            "type": "object",
            "required": ["builder"],
            "properties": {
                "builder": {
                    "type": "object", "required": ["id"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*:"},
                        "version": {"type": "object"},
                        "builderDependencies": {"type": "array", "items": _RESOURCE_DESCRIPTOR},
                    },
                },
                "metadata": {
                    "type": "object",
                    "properties": {"invocationId": {"type": "string"},
                                   "startedOn": _TIMESTAMP, "finishedOn": _TIMESTAMP},
                },
                "byproducts": {"type": "array", "items": _RESOURCE_DESCRIPTOR},
            },
        },
    },
}
