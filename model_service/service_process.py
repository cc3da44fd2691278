"""A model service in a child process: started on chosen CPU cores, ready-checked, measured, stopped.

The benchmark and the local drill run the real `peakguard serve` this way, so what they measure is
the HTTP service a pod runs, not a function call. On a 2-core box the service gets core 0 and the
load generator core 1 (`os.sched_setaffinity`), so the two do not take turns on one core unseen.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["ServiceProcess", "ServiceStartError", "cpu_seconds", "free_port", "running_on", "split_cores"]


class ServiceStartError(RuntimeError):
    """The service exited or never became ready; the message holds the tail of its log."""


def split_cores(bench: str) -> tuple[set[int], set[int]]:
    """(the server's core, the load generator's cores): the first usable core, and the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError(f"{bench} needs 2 usable cores: one for the server, one for the load generator")
    return {cpus[0]}, set(cpus[1:])


@contextlib.contextmanager
def running_on(cpus: set[int]) -> Iterator[None]:
    """This process (the load generator) pinned to `cpus` until the block ends, then as it was."""
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds process `pid` (every thread), or one `thread` of it, has used so
    far, as the kernel counts them (/proc/<pid>[/task/<thread>]/stat, fields 14 and 15)."""
    path = Path(f"/proc/{pid}/stat") if thread is None else Path(f"/proc/{pid}/task/{thread}/stat")
    stat = path.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`with ServiceProcess(settings, cpus={0}) as service:` ... `service.url`."""

    stop_timeout = 15.0
    """Seconds from SIGTERM to SIGKILL."""
    name = "peakguard serve"
    """What the errors call the server."""
    own_session = False
    """Start the server in a session of its own, and end the whole session on stop: for a server
    that starts processes of its own (the Ray peer's GCS, raylet and agents)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        cpus: set[int] | None = None,
        ready_timeout: float = 300.0,
        log_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        admin_token: str | None = None,
        keep_alive: float | None = None,
        threads: int | None = None,
        server_args: Sequence[str] = (),
    ) -> None:
        """`settings`: the serve settings file's fields (model_service.server.ServiceSettings).
        `threads`: torch's thread pool (OMP/MKL), when `cpus` does not size it; None: torch's default.
        `keep_alive`: `peakguard serve --keep-alive`, seconds (None: serve's default).
        `server_args`: more `peakguard serve` options (e.g. `--http h11 --loop asyncio`).
        `cpus`: cores to pin the process to (and to size torch's thread pool by); None leaves it free.
        `host`: a loopback address; emulated pods each get their own (127.0.0.2, ...) and share a port."""
        self.settings = dict(settings)
        self.cpus = cpus
        self.ready_timeout = ready_timeout
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self.host = host
        self.keep_alive = keep_alive
        self.threads = threads
        self.server_args = tuple(server_args)
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self._folder = Path(tempfile.mkdtemp(prefix="peakguard-serve-", dir=log_dir))
        self.log_path = self._folder / "serve.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._peak_rss = 0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        config = self._folder / "serve.json"
        config.write_text(json.dumps(self.settings, default=str))
        env = dict(os.environ, PEAKGUARD_ADMIN_TOKEN=self.admin_token, PYTHONUNBUFFERED="1")
        threads = len(self.cpus) if self.cpus else self.threads
        if threads:
            env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        command = self.command(config)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,  # noqa: S603
                                             start_new_session=self.own_session)  # fmt: skip
        if self.cpus:
            os.sched_setaffinity(self._process.pid, self.cpus)
        self._sampling.set()
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # the error carries the log's tail; nothing is left running or on disk
            raise

    def command(self, config: Path) -> list[str]:
        """The server's command line, given its settings file."""
        command = [sys.executable, "-m", "peakguard", "serve", "--config", str(config), "--host", self.host,
                   "--port", str(self.port)]  # fmt: skip
        if self.keep_alive is not None:
            command += ["--keep-alive", str(self.keep_alive)]
        return command + list(self.server_args)

    def is_ready(self, client: httpx.Client) -> bool:
        """Whether the server takes traffic now (`client` is on its URL)."""
        return client.get("/readyz").status_code == 200

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self._process is not None
                if (code := self._process.poll()) is not None:
                    raise ServiceStartError(f"{self.name} exited with code {code}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if self.is_ready(client):
                        return
                time.sleep(0.2)
        raise ServiceStartError(f"{self.name} not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int | None:
        """The service's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _sample_rss(self) -> None:
        while self._sampling.is_set():
            self._peak_rss = max(self._peak_rss, self.rss_bytes())
            time.sleep(0.2)

    def rss_bytes(self) -> int:
        """Resident memory of the service now (0 once it has exited)."""
        if self._process is None:
            return 0
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    @contextlib.contextmanager
    def peak_rss(self) -> Iterator[dict[str, int]]:
        """Peak resident memory while the block runs: `with service.peak_rss() as memory: ...`."""
        memory = {"start_bytes": self.rss_bytes(), "peak_bytes": 0}
        self._peak_rss = memory["start_bytes"]
        try:
            yield memory
        finally:
            memory["peak_bytes"] = max(self._peak_rss, self.rss_bytes())

    def set_mode(self, **fields: Any) -> dict[str, Any]:
        """PUT /admin/mode (fields of model_service.modes.OperatingMode); returns the new mode."""
        response = httpx.put(
            f"{self.url}/admin/mode", json=fields, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=10
        )
        if response.status_code != 200:
            raise RuntimeError(f"PUT /admin/mode {fields} -> {response.status_code}: {response.text}")
        mode: dict[str, Any] = response.json()["mode"]
        return mode

    def counters(self, *names: str) -> dict[str, float]:
        """Counters' values on the service's /metrics now, from one scrape, each summed over its
        labels (0 before its first increment); names without `_total`."""
        from prometheus_client.parser import text_string_to_metric_families

        response = httpx.get(f"{self.url}/metrics", timeout=10)
        response.raise_for_status()
        values = dict.fromkeys(names, 0.0)
        for family in text_string_to_metric_families(response.text):
            if family.name in values:
                values[family.name] += sum(s.value for s in family.samples if s.name == f"{family.name}_total")
        return values

    def status(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.url}/admin/status", headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=10
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def stop(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL after `stop_timeout`), with `own_session` what it
        left in its session, and remove its config and log."""
        self._sampling.clear()
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and self.own_session:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever the server left in its session
        shutil.rmtree(self._folder, ignore_errors=True)
