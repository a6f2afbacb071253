"""Start and stop the real services that scrypath_sa's tests and examples use.

PostgreSQL, Redis, RabbitMQ and PgBouncer come from Debian's packages; OpenSearch is a
real engine run as an embedded node (``scripts/opensearch-node``, built from Maven
Central artifacts).
Each service gets a throwaway directory and a free loopback port. Standard library only:
``scripts/services`` and the pytest harness both use this module.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "scripts" / "opensearch-node"
PG_USER = "scrypath"
PG_PASSWORD = "scrypath-test-secret"  # noqa: S105 - a throwaway test cluster on loopback
INSTALL_HINT = "run scripts/bootstrap (it installs everything the tests need)"


class MissingTool(RuntimeError):
    """A binary a service needs is not installed; the message names the fix."""


class ServiceFailed(RuntimeError):
    """A service did not come up; the message carries the tail of its log."""


@dataclass
class Running:
    """One started service: where to reach it and how to stop it."""

    name: str
    url: str
    pid: int
    workdir: str
    started_in: float = 0.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "url": self.url, "pid": self.pid, "workdir": self.workdir}

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout: float = 30.0) -> None:
        if self.name == "postgresql":
            pg_ctl = _pg_bin("pg_ctl")
            datadir = str(Path(self.workdir) / "data")
            _run_pg([pg_ctl, "-D", datadir, "-m", "fast", "-w", "stop"], check=False)
            return
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.2)
            else:
                time.sleep(0.1)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_bin(name: str) -> str:
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise MissingTool(
        f"PostgreSQL's {name} was not found: install the server with "
        f"`apt-get update && apt-get install -y postgresql`, or {INSTALL_HINT}"
    )


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: drop to the ``postgres`` account when root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def _run_pg(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_postgres_user() + cmd, check=check, capture_output=True, text=True, cwd="/"
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for(check: Callable[[], bool], what: str, log: Path, running: Running,
              timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not running.alive():
            raise ServiceFailed(f"{what} exited while starting. Log tail:\n{_tail(log)}")
        time.sleep(0.1)
    running.stop()
    raise ServiceFailed(f"{what} did not answer within {timeout:.0f}s. Log tail:\n{_tail(log)}")


def start_postgres(workdir: Path, port: int | None = None, durable: bool = False,
                   logical: bool = False) -> Running:
    """A throwaway PostgreSQL. Tests run it without fsync (nothing here must survive a
    power cut); ``durable=True`` keeps PostgreSQL's own defaults (fsync, synchronous
    commit), for benchmarks that compare against what production pays per commit;
    ``logical=True`` turns on logical decoding (``wal_level=logical``), for peers such
    as pgsync that read the WAL."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    port = port or free_port()
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    datadir, sockdir, log = workdir / "data", workdir / "sock", workdir / "postgres.log"
    sockdir.mkdir(exist_ok=True)
    pwfile = workdir / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        for path in (sockdir, pwfile):
            shutil.chown(path, "postgres")
    init = _run_pg([initdb, "-D", str(datadir), "-U", PG_USER, f"--pwfile={pwfile}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], check=False)
    if init.returncode != 0:
        raise ServiceFailed(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    options = f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    if logical:
        options += " -c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4"
    started = _run_pg([pg_ctl, "-D", str(datadir), "-o", options, "-l", str(log), "-w",
                       "-t", "60", "start"], check=False)
    if started.returncode != 0:
        raise ServiceFailed(f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n"
                            f"{_tail(log)}")
    pid = int((datadir / "postmaster.pid").read_text().split()[0])
    url = f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    return Running("postgresql", url, pid, str(workdir), time.monotonic() - began)


def _port_open(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path, port: int | None = None, detach: bool = False) -> Running:
    binary = shutil.which("redis-server")
    if binary is None:
        raise MissingTool(
            "redis-server was not found: install it with "
            f"`apt-get update && apt-get install -y redis-server`, or {INSTALL_HINT}"
        )
    port = port or free_port()
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=detach)
    running = Running("redis", f"redis://127.0.0.1:{port}/0", proc.pid, str(workdir),
                      proc=None if detach else proc)
    _wait_for(lambda: _redis_ping(port), "redis-server", log, running, timeout=30)
    running.started_in = time.monotonic() - began
    return running


LINES = {"2": ("target", 17), "3": ("target-3", 21)}
"""OpenSearch line -> (the node's build directory, the Java it needs at least)."""


def opensearch_classpath(line: str = "2") -> str:
    build = NODE_DIR / LINES[line][0]
    classes, lib = build / "classes", build / "lib"
    if not (classes / "scrypath" / "node" / "EmbeddedOpenSearch.class").exists() or not any(
        lib.glob(f"opensearch-{line}.*.jar")
    ):
        profile = " -P opensearch3" if line == "3" else ""
        raise MissingTool(
            f"the embedded OpenSearch {line}.x node is not built: run "
            f"`mvn -q -B -f {NODE_DIR / 'pom.xml'}{profile} package`, or {INSTALL_HINT}"
        )
    return f"{classes}{os.pathsep}{lib}{os.sep}*"


def java_for(line: str = "2") -> str:
    """A java binary for the OpenSearch ``line``: for 2.x the ``java`` on PATH (17, as
    Debian installs it); for 3.x ``SCRYPATH_JAVA_HOME`` or the newest JDK under
    /usr/lib/jvm, when it is Java 21 or newer."""
    if line == "2":
        found = shutil.which("java")
        if found is None:
            raise MissingTool("java was not found: install it with `apt-get update && "
                              f"apt-get install -y openjdk-17-jdk-headless`, or {INSTALL_HINT}")
        return found
    need = LINES[line][1]
    homes = [os.environ.get("SCRYPATH_JAVA_HOME", "")]
    homes += sorted(glob.glob("/usr/lib/jvm/*"), key=_jdk_feature, reverse=True)
    for home in homes:
        java = Path(home) / "bin" / "java"
        if home and java.exists() and _jdk_feature(home) >= need:
            return str(java)
    raise MissingTool(f"OpenSearch {line}.x needs Java {need} or newer and none was found "
                      "under /usr/lib/jvm: install one there, or point SCRYPATH_JAVA_HOME at it")


def _jdk_feature(home: str) -> int:
    """The Java feature version of the JDK at ``home`` (its ``release`` file); 0 if unknown."""
    with contextlib.suppress(OSError):
        for entry in (Path(home) / "release").read_text().splitlines():
            if entry.startswith("JAVA_VERSION="):
                version = entry.split("=", 1)[1].strip('"')
                return int(version.split(".")[0])
    return 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_opensearch(workdir: Path, port: int | None = None, detach: bool = False,
                     heap: str = "1g", line: str = "2",
                     cluster: tuple[str, int, list[int]] | None = None) -> Running:
    """A real OpenSearch node of the ``line`` ("2": 2.19, "3": 3.x) on a loopback port:
    a single-node cluster, or with ``cluster`` = (node name, its transport port, every
    node's transport port) one node of a cluster (see :class:`OpenSearchCluster`)."""
    java = java_for(line)
    classpath = opensearch_classpath(line)
    port = port or free_port()
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "opensearch.log"
    cmd = [java, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Xss1m",
           "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8",
           "-Dopensearch.set.netty.runtime.available.processors=false",
           "-Dlog4j2.formatMsgNoLookups=true", "-cp", classpath,
           "scrypath.node.EmbeddedOpenSearch", str(workdir / "home"), str(port)]
    if cluster is not None:
        node_name, transport, seeds = cluster
        cmd += [node_name, str(transport), ",".join(map(str, seeds))]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=detach)
    url = f"http://127.0.0.1:{port}"
    name = "opensearch" if line == "2" else f"opensearch{line}"
    running = Running(name, url, proc.pid, str(workdir), proc=None if detach else proc)
    if cluster is None:
        _wait_for(lambda: _http_ok(url), "OpenSearch", log, running, timeout=120)
        running.started_in = time.monotonic() - began
    return running


class OpenSearchCluster:
    """``size`` real OpenSearch nodes on loopback forming one cluster; any node can be
    killed (SIGKILL) and started again on its data, as a failed machine comes back."""

    def __init__(self, workdir: Path, size: int = 3, heap: str = "512m",
                 line: str = "2") -> None:
        self.workdir, self.heap, self.line = workdir, heap, line
        self.http = [free_port() for _ in range(size)]
        self.transport = [free_port() for _ in range(size)]
        self.nodes: list[Running | None] = [None] * size

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.http]

    def start(self, *which: int) -> None:
        """Start the nodes ``which`` (all by default) and wait until the cluster has
        every live node in it."""
        for i in which or range(len(self.nodes)):
            self.nodes[i] = start_opensearch(
                self.workdir / f"node{i}", self.http[i], heap=self.heap, line=self.line,
                cluster=(f"scrypath-node-{i}", self.transport[i], self.transport))
        self.wait_for_nodes(sum(1 for n in self.nodes if n is not None and n.alive()))

    def kill(self, i: int) -> None:
        node = self.nodes[i]
        if node is not None:
            os.kill(node.pid, signal.SIGKILL)
            if node.proc is not None:
                node.proc.wait()
        self.nodes[i] = None

    def health(self, via: int | None = None, **params: str) -> dict[str, object]:
        """``_cluster/health`` as a live node answers it (``params`` go in the query)."""
        live = [i for i, n in enumerate(self.nodes) if n is not None]
        port = self.http[via if via is not None else live[0]]
        query = "&".join(f"{k}={v}" for k, v in params.items())
        with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/_cluster/health?{query}", timeout=70) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer

    def wait_for_nodes(self, count: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if self.health(wait_for_nodes=str(count), timeout="5s").get(
                        "number_of_nodes") == count:
                    return
            time.sleep(0.5)
        logs = "\n".join(_tail(self.workdir / f"node{i}" / "opensearch.log", 10)
                         for i in range(len(self.nodes)))
        self.stop()
        raise ServiceFailed(f"the OpenSearch cluster did not form {count} nodes in "
                            f"{timeout:.0f}s. Log tails:\n{logs}")

    def stop(self) -> None:
        for node in self.nodes:
            if node is not None:
                node.stop()
        self.nodes = [None] * len(self.nodes)


def start_pgbouncer(workdir: Path, upstream: str, port: int | None = None,
                    detach: bool = False) -> Running:
    """PgBouncer in transaction pooling mode in front of the PostgreSQL at ``upstream``
    (a URL from :func:`start_postgres`): each transaction may run on another server
    connection, so no session state (prepared statements, SET, advisory locks) lasts
    from one transaction to the next. The URL it returns reaches the same database."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise MissingTool("pgbouncer was not found: install it with "
                          f"`apt-get update && apt-get install -y pgbouncer`, or {INSTALL_HINT}")
    from urllib.parse import urlsplit
    target = urlsplit(upstream)
    port = port or free_port()
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "pgbouncer.log"
    (workdir / "userlist.txt").write_text(f'"{PG_USER}" "{PG_PASSWORD}"\n')
    (workdir / "pgbouncer.ini").write_text(f"""[databases]
postgres = host=127.0.0.1 port={target.port} dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
ignore_startup_parameters = extra_float_digits,options
logfile = {log}
""")
    if os.geteuid() == 0:  # PgBouncer refuses to run as root, like PostgreSQL
        for path in (workdir, workdir / "userlist.txt", workdir / "pgbouncer.ini"):
            shutil.chown(path, "postgres")
        log.touch()
        shutil.chown(log, "postgres")
    proc = subprocess.Popen([*_as_postgres_user(), binary, str(workdir / "pgbouncer.ini")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=detach, cwd="/")
    url = upstream.replace(f"127.0.0.1:{target.port}", f"127.0.0.1:{port}")
    running = Running("pgbouncer", url, proc.pid, str(workdir),
                      proc=None if detach else proc)

    _wait_for(lambda: _port_open(port), "pgbouncer", log, running, timeout=30)
    running.started_in = time.monotonic() - began
    return running


def start_rabbitmq(workdir: Path, port: int | None = None, detach: bool = False) -> Running:
    """A throwaway RabbitMQ node (Debian's ``rabbitmq-server``) on a loopback port, with
    its own node name, Erlang distribution and epmd ports, so it never meets another."""
    binary = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if not binary.exists():
        raise MissingTool("rabbitmq-server was not found: install it with `apt-get update && "
                          f"apt-get install -y rabbitmq-server`, or {INSTALL_HINT}")
    port = port or free_port()
    began = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "rabbitmq.log"
    (workdir / "enabled_plugins").write_text("[].\n")
    (workdir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
    env = {**os.environ, "HOME": str(workdir),  # the Erlang cookie
           "RABBITMQ_NODENAME": f"scrypath{port}@localhost",
           "RABBITMQ_NODE_PORT": str(port), "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
           "RABBITMQ_DIST_PORT": str(free_port()), "ERL_EPMD_PORT": str(free_port()),
           "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
           "RABBITMQ_LOG_BASE": str(workdir / "log"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
           "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
           "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid")}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(binary)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                start_new_session=detach)
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    running = Running("rabbitmq", url, proc.pid, str(workdir), proc=None if detach else proc)

    # The AMQP listener opens once the broker has booted.
    _wait_for(lambda: _port_open(port), "rabbitmq-server", log, running, timeout=90)
    running.started_in = time.monotonic() - began
    return running


STARTERS: dict[str, Callable[..., Running]] = {
    "postgresql": start_postgres,
    "redis": start_redis,
    "opensearch": start_opensearch,
    "opensearch3": functools.partial(start_opensearch, line="3"),
    "rabbitmq": start_rabbitmq,
}


def start_all(workdir: Path, names: list[str], detach: bool = False,
              ports: dict[str, int] | None = None) -> dict[str, Running]:
    """Start the named services side by side; on any failure stop what did start."""
    ports = ports or {}

    def start(name: str) -> Running:
        kwargs: dict[str, object] = {"port": ports.get(name)}
        if name != "postgresql":
            kwargs["detach"] = detach
        return STARTERS[name](workdir / name, **kwargs)

    with ThreadPoolExecutor(max_workers=len(names) or 1) as pool:
        futures = {name: pool.submit(start, name) for name in names}
    started, errors = {}, []
    for name, future in futures.items():
        try:
            started[name] = future.result()
        except Exception as exc:  # noqa: BLE001 - reported together below
            errors.append(exc)
    if errors:
        for running in started.values():
            running.stop()
        raise errors[0]
    return started


def save_state(path: Path, running: dict[str, Running]) -> None:
    path.write_text(json.dumps({k: v.to_json() for k, v in running.items()}, indent=2))


def load_state(path: Path) -> dict[str, Running]:
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    return {k: Running(v["name"], v["url"], v["pid"], v["workdir"]) for k, v in raw.items()}
