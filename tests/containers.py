"""A private Docker daemon for tests/test_compose_stack.py, built from Debian's and PyPI's
packages by scripts/provision-containers (deploy/compose/standins/README.md tells the recipe).

dockerd runs with its own data root (kept in the cache, so images survive between runs), its own
socket and exec root, without touching the host's firewall (--iptables=false, no default
bridge), and is stopped by its pid. The stand-in base images and the project image are built
with the layer cache, so a second run rebuilds nothing that did not change.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

PROVISION = REPO / "scripts" / "provision-containers"
STANDINS = REPO / "deploy" / "compose" / "standins"
EXEC_ROOT = Path("/run/hpo-compose-test")  # short: containerd's socket paths live under it
PROJECT_IMAGE = "hpo:latest"


def cache_dir() -> Path:
    default = (Path("/var/cache/hpo-compose-test") if os.geteuid() == 0
               else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
               / "hpo-compose-test")
    return Path(os.environ.get("HPO_CONTAINER_CACHE", default))


def provision() -> Path:
    """Run scripts/provision-containers; skip with its one line where the machine cannot."""
    if os.geteuid() != 0:
        pytest.skip("the compose test starts its own dockerd and needs root")
    result = subprocess.run([str(PROVISION)], capture_output=True, text=True, timeout=900)
    if result.returncode == 3:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, f"scripts/provision-containers failed:\n{result.stderr[-3000:]}"
    return cache_dir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_pid(pid: int, timeout: float = 60) -> None:
    """SIGTERM, wait, then SIGKILL: one process, by its id."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


class Docker:
    """dockerd from the cache, with `docker` and `docker compose` clients bound to it."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.root = cache / "root"
        self.socket = EXEC_ROOT / "docker.sock"
        self.pidfile = EXEC_ROOT / "dockerd.pid"
        self.log_path = cache / "dockerd.log"
        self.env = {**os.environ,
                    "PATH": f"{self.root}/usr/bin:{self.root}/usr/sbin:{os.environ['PATH']}",
                    "DOCKER_HOST": f"unix://{self.socket}",
                    "DOCKER_CONFIG": str(cache / "docker-config"),
                    # The classic builder: Debian's docker.io has no buildx.
                    "DOCKER_BUILDKIT": "0", "COMPOSE_DOCKER_CLI_BUILD": "0"}
        self.process: subprocess.Popen | None = None
        self._lock = None

    def start(self) -> Docker:
        # One dockerd per data root: a second test run on this machine waits for the first.
        self._lock = open(self.cache / "dockerd.lock", "w")
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{self.cache}/dockerd.lock held for 15 minutes by another run")
                time.sleep(2)
        # A dockerd left by a run of this test that was killed holds the data root: stop it.
        if self.pidfile.exists():
            pid = int(self.pidfile.read_text().strip() or 0)
            if pid and _alive(pid) and "dockerd" in Path(f"/proc/{pid}/cmdline").read_text():
                _stop_pid(pid)
        EXEC_ROOT.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(self.root / "usr/sbin/dockerd"), "--data-root", str(self.cache / "data-root"),
             "--exec-root", str(EXEC_ROOT / "exec"), "--pidfile", str(self.pidfile),
             "-H", f"unix://{self.socket}", "--iptables=false", "--ip-forward=false",
             "--bridge=none", "--storage-driver=overlay2"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = self.log_path.read_text(errors="replace")
                if "overlay" in text and ("not supported" in text or "driver not" in text):
                    pytest.skip("dockerd: no overlay support for its data root here: "
                                + text.strip().splitlines()[-1][-300:])
                pytest.fail(f"dockerd exited {self.process.returncode}:\n{text[-3000:]}")
            if self.docker("info", check=False, timeout=10).returncode == 0:
                return self
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"dockerd did not answer within 90s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # dockerd stops its containers and its own containerd
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        # dockerd leaves its default network namespace mounted under the exec root.
        netns = EXEC_ROOT / "exec" / "netns" / "default"
        if str(netns) in Path("/proc/mounts").read_text():
            subprocess.run(["umount", str(netns)], capture_output=True, timeout=30)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.root / "usr/bin/docker"), *args], env=self.env,
                                capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def build_images(self) -> dict[str, float]:
        """The base, the two stand-ins and the project image; seconds each step took."""
        took = {}
        started = time.monotonic()
        if not self.has_image("localhost/debian:bookworm"):
            # Imported once only: a new import is a new image id, which would void the layer
            # cache of everything built on it (the project image's torch layer included).
            with open(self.cache / "debian-bookworm.tar", "rb") as rootfs:
                subprocess.run([str(self.root / "usr/bin/docker"), "import", "-",
                                "localhost/debian:bookworm"], stdin=rootfs, env=self.env,
                               check=True, capture_output=True, timeout=300)
        took["base"] = time.monotonic() - started
        with tempfile.TemporaryDirectory() as context:
            for f in STANDINS.iterdir():
                if f.is_file():
                    shutil.copy2(f, context)
            certs = Path(context) / "certs"
            certs.mkdir()
            for crt in Path("/usr/local/share/ca-certificates").glob("*.crt"):
                shutil.copy2(crt, certs)  # an egress proxy's CA, for pip inside the builds
            for tag, name in (("python:3.11-slim", "python-standin"), ("postgres:15", "postgres-standin")):
                started = time.monotonic()
                self.docker("build", "--network=host", "-q", "-t", tag, "-f",
                            f"{context}/{name}.Containerfile", context, timeout=600)
                took[tag] = time.monotonic() - started
        started = time.monotonic()
        # Built once here; `up --no-build` then uses it for every service (compose would build it
        # once per service that has `build:`).
        self.docker("build", "--network=host", "-q", "-t", PROJECT_IMAGE, str(REPO), timeout=1200)
        took[PROJECT_IMAGE] = time.monotonic() - started
        self.docker("image", "prune", "-f", timeout=300)  # earlier builds' layers, now unused
        return took
