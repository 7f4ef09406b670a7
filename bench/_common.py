"""What every benchmark shares: the spread of repeated measurements, waiting for a server it started, and the
one way it ends (print its table, or the JSON when it has none, and write the JSON report)."""

from __future__ import annotations

import json
import os
import statistics
import time

from arbitrage.results import write_json_atomic


def spread(xs) -> dict:
    """Repeated runs of one measurement: mean, min, max and the runs themselves."""
    xs = list(xs)
    return {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs), "n": len(xs), "runs": xs}


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


def wait_healthy(proc, port: int, what: str, timeout_s: float = 60.0):
    """Wait until the server `proc` started answers GET /health on 127.0.0.1:`port`; stop it and raise (with the
    end of its stderr when it exited) when it does not within `timeout_s`."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"{what} exited before it answered: {err}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"{what} did not start on port {port} within {timeout_s:.0f} s")
