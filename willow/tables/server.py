"""A throwaway local ``redis-server`` for tests, benchmarks and trying RedisTable out.

:class:`LocalRedisServer` starts ``redis-server`` on a free port of 127.0.0.1 in a temporary
directory with persistence off (``--save "" --appendonly no``), waits until it answers, and stops
it (and removes the directory) on :meth:`stop` or at the end of a ``with`` block. It is not a way
to run Redis in production.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from willow.errors import TableError

__all__ = ["LocalRedisServer", "redis_server_binary"]

INSTALL_HINT = (
    "Install it with `apt-get install redis-server` (Debian/Ubuntu; `brew install redis` on macOS), "
    "or point RedisTable at a running server."
)


def redis_server_binary() -> str | None:
    """The path of the ``redis-server`` executable, or ``None`` when it is not installed."""
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedisServer:
    """A ``redis-server`` child process on ``127.0.0.1:<free port>``; ``url`` addresses it."""

    def __init__(self, port: int | None = None, start_timeout: float = 10.0) -> None:
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> LocalRedisServer:
        """Start the server and wait until it accepts connections (TableError if it cannot)."""
        binary = redis_server_binary()
        if binary is None:
            raise TableError(f"redis-server is not installed (not found on PATH). {INSTALL_HINT}")
        self._dir = Path(tempfile.mkdtemp(prefix="willow-redis-"))
        command = [
            binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        log = open(self._dir / "redis.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = (self._dir / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise TableError(f"redis-server exited at start on port {self.port}: {message}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TableError(
            f"redis-server did not answer on {self.host}:{self.port} within {self.start_timeout} s."
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalRedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
