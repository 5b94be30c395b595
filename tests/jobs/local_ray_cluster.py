"""A real Ray cluster of several nodes on this machine, started the way a cluster is: `ray start`.

Each node is a `ray start --block` child process of the test (head first, then workers joining
its GCS). Each node gets its own `--temp-dir` under one fresh, short folder of the cluster
(`/tmp/arc-XXXX/<node>`: separate session and log folders, as separate machines have, so each
log line reaches the driver once). Every process Ray spawns for the cluster names that folder
on its command line, so `shutdown()` can find and end exactly this cluster's processes and
nothing else on the machine (other Ray instances may run beside it). Ports are picked free
ones, never Ray's defaults.

Token authentication is on, as Ray 2.60 ships it: `RAY_AUTH_MODE=token` in every node's
environment and the token in a file named by `RAY_AUTH_TOKEN_PATH` (never `~/.ray/auth_token`).
`client_env()` is the environment a `ray job ...` client needs to talk to the cluster.

    cluster = LocalRayCluster()
    try:
        cluster.start_head(num_cpus=2, dashboard=True)
        worker = cluster.add_node(num_cpus=1, resources={"slot": 1})
        ...
        cluster.kill_node(worker)   # SIGKILL its raylet: the node dies as a crashed machine does
    finally:
        cluster.shutdown()
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.ports import free_port

VENV_BIN = Path(sys.executable).parent
RAY_CLI = str(VENV_BIN / "ray")

# Environment every process of the cluster inherits (Ray workers inherit their raylet's).
NODE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DS_ACCELERATOR": "cpu",
    "RAY_TRAIN_V2_ENABLED": "1",
    "PYTHONUNBUFFERED": "1",
    # a dead node is declared dead after ~3 s instead of ~15 s (the test waits less)
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
    # SIGTERM to `ray start --block` stops the node at once (no 30 s drain: nothing to migrate)
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    # a Train restart right after a node dies may still ask for the dead node (it is declared
    # dead a few seconds later); its placement group then waits this long, not 60 s, before
    # Train retries with the workers that fit
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15",
}
# Variables of the caller's shell that would point a process at another cluster or token.
FOREIGN = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
           "RAY_AUTH_MODE", "RAY_JOB_HEADERS")


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    log: Path
    args: list[str] = field(default_factory=list)

    def raylet(self) -> psutil.Process | None:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        return next((p for p in kids if _name(p) == "raylet"), None)

    def train_worker_pids(self) -> list[int]:
        """Ray Train workers running on this node (children of its raylet)."""
        raylet = self.raylet()
        if raylet is None:
            return []
        out = []
        for p in _children(raylet):
            try:
                if "RayTrainWorker" in " ".join(p.cmdline()):
                    out.append(p.pid)
            except psutil.Error:
                pass
        return out


class LocalRayCluster:
    def __init__(self, root: str | Path | None = None):
        self.created_at = time.time()
        self.started_in = 0.0  # seconds the head took to come up
        # short: Ray puts unix sockets under it, and their paths may not exceed 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="arc-", dir="/tmp"))
        self.root = Path(root) if root else self.temp_dir
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_file = self.root / "auth_token"
        self.token_file.write_text(secrets.token_hex(32))
        self.token_file.chmod(0o600)
        self.nodes: list[RayNode] = []
        self.gcs_port = free_port()
        self.dashboard_port: int | None = None

    # ----- addresses and environments -------------------------------------------------------
    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # `python` = this venv's
        return env

    def node_env(self) -> dict:
        return {**self._base_env(), **NODE_ENV, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def client_env(self, auth: str = "token") -> dict:
        """Env of a `ray job` client: auth 'token' (ours), 'none' (no token) or 'wrong'."""
        env = self._base_env()
        if auth == "token":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))
        elif auth == "wrong":
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        return env

    def driver_env(self) -> dict:
        """Env of a Python driver that joins the cluster with ray.init(address=...)."""
        return {**self.node_env(), "RAY_ADDRESS": self.gcs_address}

    # ----- nodes ---------------------------------------------------------------------------
    def _start(self, name: str, args: list[str], timeout: float) -> RayNode:
        log = self.root / f"ray-start-{name}.log"
        # Ray maps --node-ip-address=127.0.0.1 to this host's address (resolve_ip_for_localhost),
        # so every node advertises the same IP; they differ by ports and temp dirs
        cmd = [RAY_CLI, "start", "--block", "--disable-usage-stats",
               f"--temp-dir={self.temp_dir / name}", "--node-ip-address=127.0.0.1",
               "--object-store-memory=200000000",
               "--min-worker-port=0", "--max-worker-port=0",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", *args]
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    env=self.node_env(), start_new_session=True)
        node = RayNode(name, proc, log, cmd)
        self.nodes.append(node)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "Ray runtime started" in log.read_text(errors="replace"):
                return node
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"ray node {name!r} did not start ({' '.join(cmd)}):\n"
                           + log.read_text(errors="replace")[-4000:])

    def start_head(self, num_cpus: int, dashboard: bool = False, timeout: float = 120) -> RayNode:
        args = ["--head", f"--port={self.gcs_port}", f"--num-cpus={num_cpus}",
                f"--ray-client-server-port={free_port()}"]
        if dashboard:
            self.dashboard_port = free_port()
            args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={self.dashboard_port}"]
        else:
            args += ["--include-dashboard=false"]
        t0 = time.time()
        head = self._start("head", args, timeout)
        if dashboard:
            self._wait_for_dashboard(time.time() + timeout)
        self.started_in = time.time() - t0
        return head

    def add_node(self, num_cpus: int, resources: dict | None = None, name: str | None = None,
                 timeout: float = 120) -> RayNode:
        args = [f"--address={self.gcs_address}", f"--num-cpus={num_cpus}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        return self._start(name or f"worker{len(self.nodes)}", args, timeout)

    def _wait_for_dashboard(self, deadline: float) -> None:
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5)
                return
            except urllib.error.HTTPError:
                return  # it answered (401 without a token): it is up
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"dashboard at {self.dashboard_url} never answered")

    def kill_node(self, node: RayNode, timeout: float = 60) -> int:
        """SIGKILL the node's raylet; its `ray start --block` then kills the rest and exits."""
        raylet = node.raylet()
        if raylet is None:
            raise RuntimeError(f"node {node.name} has no raylet")
        raylet.kill()
        try:
            node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_tree(node)
        return raylet.pid

    # ----- cleanup -------------------------------------------------------------------------
    @staticmethod
    def _kill_tree(node: RayNode) -> None:
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def own_processes(self) -> list[psutil.Process]:
        """Live processes of this cluster: those whose command line names its temp dir."""
        mark = f"{self.temp_dir}/"  # every node folder is under it
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if p.pid != os.getpid() and mark in " ".join(p.info["cmdline"] or []):
                    out.append(p)
            except psutil.Error:
                pass
        return out

    def shutdown(self, grace: float = 20) -> None:
        """Stop every node (workers first), then any straggler of this cluster; remove temp dir."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
        deadline = time.time() + grace
        for node in reversed(self.nodes):
            try:
                node.proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self._kill_tree(node)
        stragglers = self.own_processes()
        for p in stragglers:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(stragglers, timeout=10)
        if self.root != self.temp_dir:  # keep Ray's logs beside the test's files
            for node in self.nodes:
                logs = self.temp_dir / node.name / "session_latest" / "logs"
                if logs.is_dir():
                    shutil.copytree(logs, self.root / "ray-logs" / node.name, dirs_exist_ok=True,
                                    ignore_dangling_symlinks=True,
                                    ignore=shutil.ignore_patterns("*.sock"))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def read_csv_rows(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))
