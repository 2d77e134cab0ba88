"""Checks a live answer against the server's own OpenAPI document: its status is listed for the
operation, its content type too, its required headers are there, its body (JSON, or each event of
a stream, of the kind the document describes) is valid against the schema the document gives, and
an error's type and code are among those the document lists for its status (``x-error-codes``;
Anthropic's error object has a type and no code)."""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
import referencing
import referencing.jsonschema

URI = "urn:chatgate:openapi"


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


@dataclass
class Conformance:
    document: dict[str, Any]
    seen: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        resource = referencing.jsonschema.DRAFT202012.create_resource(self.document)
        self._registry: referencing.Registry[Any] = referencing.Registry().with_resource(URI, resource)
        # A parameter is one segment; failing that, several (an id with slashes, as a deployment's).
        self._templates = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", segment, path) + "$"), path)
            for segment in ("[^/]+", ".+")
            for path in self.document["paths"]
        ]

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        """The documented path and operation that answer ``method path``."""
        for regex, template in self._templates:
            if regex.match(path):
                operations = self.document["paths"][template]
                if method.lower() in operations:
                    return template, operations[method.lower()]
        raise AssertionError(f"{method} {path} is not in the document")

    def check(self, response: httpx.Response) -> None:
        """``response`` (read, streams included) is as the document says."""
        method, path = response.request.method, response.request.url.path
        template, operation = self.operation(method, path)
        status = str(response.status_code)
        where = f"{method} {template} answered {status}"
        responses = operation["responses"]
        key = next((k for k in (status, status[0] + "XX", "default") if k in responses), None)
        assert key is not None, f"{where}, which the document does not list: {response.text[:300]}"
        self.seen.setdefault((method, template), set()).add(response.status_code)
        entry = responses[key]
        for name, header in entry.get("headers", {}).items():
            if self._resolve(header).get("required"):
                assert name in response.headers, f"{where} without its {name} header"
        content = entry.get("content")
        if not content:
            assert not response.content, f"{where} with a body the document does not describe"
            return
        media = response.headers.get("content-type", "").split(";")[0].strip()
        assert media in content, f"{where} as {media}; the document says {sorted(content)}"
        base = ("paths", template, method.lower(), "responses", key, "content", media, "schema")
        if media == "application/json":
            self._validate(base, response.json(), where)
            if "x-error-codes" in entry and key != "4XX":  # an upstream's refusal has its own codes
                self._check_code(entry["x-error-codes"], response.json()["error"], where)
        elif media == "text/event-stream":
            self._check_events(base, response.text, where)

    @staticmethod
    def _check_code(codes: dict[str, list[str]], error: dict[str, Any], where: str) -> None:
        """The error's type and code are among those the document lists for the status (the type
        alone for Anthropic's error object, which carries no code)."""
        kind, code = error["type"], error.get("code")
        assert kind in codes and ("code" not in error or code in codes[kind]), (
            f"{where} with error type {kind!r} and code {code!r}, which the document does not list "
            f"for that status ({codes}): add the error to the route's raises(...)"
        )

    def _check_events(self, base: tuple[str, ...], text: str, where: str) -> None:
        schema = self._resolve({"$ref": "#/" + _pointer(*base)})
        if "event" in schema.get("properties", {}):  # named events (Responses, Messages)
            content = (*base, "properties", "data", "contentSchema")
            named = list(_events(text))
            assert named, f"{where}: a stream without events"
            for name, data in named:
                assert name is not None, f"{where}: an event without its name: {data[:200]}"
                assert data != "[DONE]", f"{where}: [DONE] in a stream of named events"
                payload = json.loads(data)
                assert payload.get("type") == name, (
                    f"{where}: event {name!r} holding a {payload.get('type')!r}"
                )
                self._validate(content, payload, where)
            return
        events = list(_data_lines(text))
        assert events and events[-1] == "[DONE]", f"{where}: a stream that does not end with [DONE]"
        assert "[DONE]" not in events[:-1], f"{where}: [DONE] before the end of the stream"
        content = (*base, "properties", "data", "else", "contentSchema")
        for data in events[:-1]:
            self._validate(content, json.loads(data), where)

    def _validate(self, parts: tuple[str, ...], instance: Any, where: str) -> None:
        schema = {"$ref": f"{URI}#/{_pointer(*parts)}"}
        validator = jsonschema.Draft202012Validator(
            schema, registry=self._registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not errors, (
            f"{where} with a body that breaks its schema: {errors[0].message} at {list(errors[0].absolute_path)}"
        )

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            found: dict[str, Any] = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                found = found[part.replace("~1", "/").replace("~0", "~")]
            node = found
        return node

    def operations(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for template, operations in self.document["paths"].items():
            for method, operation in operations.items():
                yield method.upper(), template, operation


def _events(text: str) -> Iterator[tuple[str | None, str]]:
    """Each event's name (``event:``, None if it had none) and ``data:`` payload (comments skipped)."""
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        if data:
            yield name, "\n".join(data)


def _data_lines(text: str) -> Iterator[str]:
    """The ``data:`` payload of each event (keep-alive comments and blank lines skipped)."""
    for line in text.splitlines():
        if line.startswith("data:"):
            yield line[len("data:") :].strip()
