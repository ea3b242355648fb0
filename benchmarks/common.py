"""What the benchmark scripts share: ``write_result``, what every script does with its result (write it as
JSON and print it)."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(result: dict, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
