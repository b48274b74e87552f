"""Build the demo face embedding bundle `models/face-embed-demo/<version>/` from scratch.

Fits Fisherfaces on synthetic cartoon faces (nothing is downloaded; see
`edge_agent/faces/demo_model.py`), exports it to ONNX, calibrates the suggested threshold at
FAR 1e-4 on held-out synthetic people and writes the manifest and the model card. The
bundle is for tests and demos only; its card says so.

    .venv/bin/python scripts/make_face_model.py [--version 1.0.0] [--out models/face-embed-demo]

Needs the `train` extra (the `onnx` package).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.faces.demo_model import build_demo_bundle  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.0.0", help="version directory to write")
    parser.add_argument(
        "--out", type=Path, default=REPO / "models" / "face-embed-demo", help="model directory"
    )
    parser.add_argument("--dim", type=int, default=128, help="embedding length")
    args = parser.parse_args()
    report = build_demo_bundle(args.out, args.version, dim=args.dim)
    print(
        json.dumps(
            {
                "bundle": str(report.path),
                "dim": report.dim,
                "threshold": report.threshold,
                "far": report.far,
                "tar": report.tar,
                "eer": report.eer,
                "genuine_pairs": report.genuine_pairs,
                "impostor_pairs": report.impostor_pairs,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
