"""Write the JSON Schemas of the uplink payloads and list them in docs/mqtt.md.

The schemas are generated from the pydantic models in `edge_agent/contract/payloads.py`, so the
documented contract and the code that checks it cannot drift apart:

    python scripts/gen_mqtt_schemas.py           # write docs/schemas/*.json, refresh the doc
    python scripts/gen_mqtt_schemas.py --check   # exit 1 when anything is stale (tests, CI)

Only the part of docs/mqtt.md between `<!-- schemas:start -->` and `<!-- schemas:end -->`
is rewritten; the markers are appended at the end of the file if it has none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_agent.contract.payloads import EVENT_BODIES, PAYLOADS, Envelope, json_schemas

ROOT = Path(__file__).resolve().parents[1]
START = "<!-- schemas:start -->"
END = "<!-- schemas:end -->"


def schema_files() -> dict[str, str]:
    """File name under docs/schemas → its text."""
    return {
        f"{kind}.json": json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for kind, schema in json_schemas().items()
    }


def _keys(model: type[Envelope]) -> str:
    own = [name for name in model.model_fields if name not in Envelope.model_fields]
    return ", ".join(f"`{name}`" for name in own)


def doc_section() -> str:
    """The generated part of docs/mqtt.md, markers included."""
    lines = [
        START,
        "## JSON Schemas",
        "",
        "Generated from `edge_agent/contract/payloads.py` by `python scripts/gen_mqtt_schemas.py`;",
        "do not edit between these markers (`--check` fails when they are stale). Each schema",
        "is JSON Schema draft 2020-12 and includes the envelope.",
        "",
        "| Topic kind | Schema | Keys after the envelope (`device`, `seq`, `msg_id`, `ts`) |",
        "|---|---|---|",
    ]
    for kind, model in PAYLOADS.items():
        lines.append(f"| `{kind}` | [schemas/{kind}.json](schemas/{kind}.json) | {_keys(model)} |")
    lines += [
        "",
        "Event kinds whose body a consumer acts on are held to a fixed shape (an `if`/`then`",
        "rule in `events.json`):",
        "",
        "| `event` | Body keys |",
        "|---|---|",
    ]
    for name, body in EVENT_BODIES.items():
        lines.append(f"| `{name}` | {', '.join(f'`{k}`' for k in body.model_fields)} |")
    lines += [
        "",
        "Evolution: keys may be added to any payload in later versions, so the schemas allow",
        "additional properties and a consumer must ignore keys it does not know. Keys are",
        "never renamed or removed, and their types never change, without a new topic kind.",
        "In Python, `edge_agent.contract.payloads.decode_payload(raw, content_encoding)` undoes",
        "the optional zlib compression of `results` and `parse_payload(kind, message)`",
        "validates; `scripts/cloud_consumer.py` does both for a whole fleet, stores what it",
        "receives in SQLite and reports gaps and duplicates per gateway and topic.",
        END,
    ]
    return "\n".join(lines)


def refreshed_doc(text: str) -> str:
    """docs/mqtt.md with its generated section replaced (or appended)."""
    section = doc_section()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        return head + section + tail
    return text.rstrip("\n") + "\n\n" + section + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if anything is stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    schemas_dir = args.root / "docs" / "schemas"
    doc = args.root / "docs" / "mqtt.md"
    wanted = {schemas_dir / name: text for name, text in schema_files().items()}
    wanted[doc] = refreshed_doc(doc.read_text(encoding="utf-8"))
    stale = [
        p for p, text in wanted.items() if not p.exists() or p.read_text(encoding="utf-8") != text
    ]
    extra = sorted(p for p in schemas_dir.glob("*.json") if p not in wanted)
    if args.check:
        if stale or extra:
            for p in [*stale, *extra]:
                print(f"stale: {p.relative_to(args.root)}", file=sys.stderr)
            print("run: python scripts/gen_mqtt_schemas.py", file=sys.stderr)
            return 1
        return 0
    schemas_dir.mkdir(parents=True, exist_ok=True)
    for p in stale:
        p.write_text(wanted[p], encoding="utf-8")
        print(f"wrote {p.relative_to(args.root)}")
    for p in extra:
        p.unlink()
        print(f"removed {p.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
