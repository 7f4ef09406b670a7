"""The one way a benchmark ends: print its table (or the JSON when it has none) and write the JSON report."""
from __future__ import annotations

import json
import os

from arbitrage.results import write_json_atomic


def finish(report: dict, out: str | None, lines: list[str] | None = None) -> dict:
    if lines is not None:
        print("\n".join(lines))
        report["table"] = lines
    else:
        print(json.dumps(report, indent=2))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        write_json_atomic(out, report)
    return report
