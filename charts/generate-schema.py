"""Write charts/imaginghub/values.schema.json and the values reference in
charts/imaginghub/README.md from values.schema.yaml (the source, with
descriptions), or check that they are up to date: `python
charts/generate-schema.py [--check]`. Helm validates values against the JSON
at install, upgrade, template and lint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "imaginghub"


def generated() -> str:
    schema = yaml.safe_load((CHART / "values.schema.yaml").read_text())
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


START, END = "<!-- values reference: start -->", "<!-- values reference: end -->"


def _type(node: dict, defs: dict) -> str:
    if "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items()
                                                              if k != "$ref"}}
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        return "quantity"
    t = node.get("type", "")
    if t == "array":
        return f"list of {_type(node.get('items', {}), defs) or 'any'}"
    return t


def _rows(node: dict, defs: dict, defaults, prefix: str):
    if "$ref" in node:
        ref = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**ref, "description": node.get("description", ref.get("description", ""))}
    props = node.get("properties")
    desc = " ".join(str(node.get("description", "")).split())
    if prefix and (not props or node.get("type") != "object"):
        shown = json.dumps(defaults) if defaults not in (None, {}, []) else ""
        yield f"| `{prefix}` | {_type(node, defs)} | {f'`{shown}`' if shown else ''} | {desc} |"
        return
    if prefix:
        yield f"| `{prefix}` | object | | {desc} |"
    for name, child in (props or {}).items():
        sub = defaults.get(name) if isinstance(defaults, dict) else None
        yield from _rows(child, defs, sub, f"{prefix}.{name}" if prefix else name)


def reference() -> str:
    schema = yaml.safe_load((CHART / "values.schema.yaml").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    lines = ["| key | type | default | description |", "|---|---|---|---|",
             *_rows(schema, schema.get("definitions", {}), defaults, "")]
    return "\n".join(lines) + "\n"


def readme_with_reference() -> str:
    text = (CHART / "README.md").read_text()
    a, b = text.index(START) + len(START), text.index(END)
    return text[:a] + "\n" + reference() + text[b:]


def main(argv: list[str]) -> int:
    targets = {CHART / "values.schema.json": generated(),
               CHART / "README.md": readme_with_reference()}
    if "--check" in argv:
        stale = [str(p) for p, text in targets.items()
                 if not p.exists() or p.read_text() != text]
        if stale:
            print(f"{', '.join(stale)} not generated from values.schema.yaml: run "
                  "'python charts/generate-schema.py'", file=sys.stderr)
            return 1
        return 0
    for path, text in targets.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
