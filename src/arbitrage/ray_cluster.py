"""Past one machine on Ray (the optional `ray` extra): runs, sweeps and calibrations as Ray tasks over shards of
the problems, and the server as a Ray Serve deployment.

`--ray [ADDRESS]` splits the problems into N shards (`--shard K/N`: a stable partition by problem id) and runs
each as a Ray task that executes the ordinary command into OUT/ray-shards/K/ (every task loads its models once;
`--ray-gpus-per-task` / `--ray-cpus-per-task` reserve its devices). A task whose worker dies is retried by Ray and
resumes from its shard's results (no problem is lost or counted twice: the run's own resume logic). When every
shard is done, their results are joined into OUT with the checks `--shard` already has (same settings, each
shard once). Progress shows across the cluster (finished problems in every shard). OUT must be on a filesystem
every node sees (as for any multi-node job that writes files), and each node needs this package installed (or a
Ray runtime environment that installs it).

`serve --ray-serve` deploys the OpenAI-compatible app as a Ray Serve deployment: each replica builds its own
models and engine, Ray routes requests across replicas and autoscales them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from .errors import BackendError, ConfigError

SHARDS_DIR = "ray-shards"
RAY_FLAGS = ("--ray", "--ray-tasks", "--ray-gpus-per-task", "--ray-cpus-per-task")


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'arbitrage[ray]'") from None
    return ray


def connect(address: str | None) -> None:
    """Join a cluster at `address` ("auto": the one this machine is part of), or start a local one."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(
            address=None if address in (None, "", "local") else address,
            ignore_reinit_error=True,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )


def strip_ray_flags(argv: Sequence[str]) -> list[str]:
    """The command line without its --ray* options (what each shard task runs, with its own --shard and --out)."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in RAY_FLAGS:
            takes_value = "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            skip = takes_value
            continue
        out.append(a)
    return out


def _replace_out(argv: list[str], out: str) -> list[str]:
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == "--out":
            argv[i + 1] = out
            return argv
        if a.startswith("--out="):
            argv[i] = f"--out={out}"
            return argv
    return [*argv, "--out", out]


def shard_commands(argv: Sequence[str], out: str, n: int) -> list[list[str]]:
    """Each shard task's command line: the same command, `--shard K/N`, into OUT/ray-shards/K."""
    base = strip_ray_flags(argv)
    if any(a == "--shard" or a.startswith("--shard=") for a in base):
        raise ConfigError("--ray splits the problems itself: leave --shard out")
    return [
        [*_replace_out(base, os.path.join(out, SHARDS_DIR, str(k))), "--shard", f"{k}/{n}", "--quiet"] for k in range(n)
    ]


def _count_finished(shard_dir: str) -> int:
    total = 0
    for root, _, files in os.walk(shard_dir):
        if "results.jsonl" in files:
            with open(os.path.join(root, "results.jsonl"), "rb") as f:
                total += sum(1 for line in f if line.strip())
    return total


def run_shards(
    argv: Sequence[str],
    out: str,
    *,
    address: str | None,
    tasks: int | None = None,
    gpus_per_task: float = 0.0,
    cpus_per_task: float = 1.0,
    max_retries: int = 3,
    progress: bool = True,
) -> list[str]:
    """Run the command once per shard as Ray tasks; returns the shard directories (all finished)."""
    ray = _ray()
    connect(address)
    if tasks is None:
        resources = ray.cluster_resources()
        per = gpus_per_task if gpus_per_task else cpus_per_task
        tasks = max(1, int(resources.get("GPU" if gpus_per_task else "CPU", 1) // max(per, 1e-9)))
    if tasks < 1:
        raise ConfigError("--ray-tasks must be at least 1")
    commands = shard_commands(argv, out, tasks)

    @ray.remote(max_retries=max_retries, retry_exceptions=False)
    def shard_task(command: list[str]) -> int:
        from arbitrage.cli import main

        code = main(command)
        if code:
            raise RuntimeError(f"`arbitrage {' '.join(command)}` exited with {code}")
        return code

    refs = [
        shard_task.options(num_gpus=gpus_per_task, num_cpus=cpus_per_task, name=f"arbitrage-shard-{k}").remote(c)
        for k, c in enumerate(commands)
    ]
    dirs = [os.path.join(out, SHARDS_DIR, str(k)) for k in range(tasks)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"ray: {tasks} shard tasks", unit="problem", file=sys.stderr, dynamic_ncols=True)
    pending = list(refs)
    try:
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            if bar is not None:
                bar.n = sum(_count_finished(d) for d in dirs)
                bar.refresh()
        ray.get(refs)  # re-raises a task's own error (after Ray's retries for a dead worker)
    finally:
        if bar is not None:
            bar.close()
    return dirs


def wait_for_interrupt() -> None:
    """Keep the driver alive while Ray Serve serves (Ctrl-C stops it)."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _start_serve(serve, host: str, port: int, timeout: float) -> None:
    """serve.start, waiting up to `timeout` s for its HTTP proxy: Serve gives up after a fixed 60 s, which a proxy
    process starting on a busy machine can need more than (seen here: 3 minutes on 2 loaded cores)."""
    import httpx

    deadline = time.monotonic() + timeout
    try:
        serve.start(http_options={"host": host, "port": port})
        return
    except TimeoutError:
        pass
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/-/healthz"
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2.0)  # any answer (503 until a route exists) means the proxy is up
            return
        except httpx.HTTPError:
            time.sleep(1.0)
    raise BackendError(f"Ray Serve's HTTP proxy on {host}:{port} did not start within {timeout:g} s")


def deploy(
    build_app,
    *,
    address: str | None,
    host: str,
    port: int,
    num_replicas: int | None,
    autoscale: tuple[int, int] | None,
    gpus_per_replica: float,
    cpus_per_replica: float,
    name: str = "arbitrage",
    start_timeout: float = 300.0,
):
    """Run the app `build_app()` returns as a Ray Serve deployment on host:port (each replica calls `build_app`)."""
    ray = _ray()
    from ray import serve

    if address in (None, "", "local") and not ray.is_initialized():
        # Serve kills a proxy that is not ready within 5 s (then 10, 15): too short for a worker process starting
        # on a busy machine. A cluster started here reads this from the environment; a running one keeps its own.
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    connect(address)
    _start_serve(serve, host, port, start_timeout)
    options: dict = {"ray_actor_options": {"num_gpus": gpus_per_replica, "num_cpus": cpus_per_replica}}
    if autoscale is not None:
        options["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1]}
    else:
        options["num_replicas"] = num_replicas or 1
    deployment = serve.deployment(name=name, **options)(serve.ingress(build_app)())
    serve.run(deployment.bind(), name=name, route_prefix="/")
    return ray
