"""`medvit server`: the production MLflow tracking server, ``mlflow server`` on PostgreSQL with served artifacts.

The store is any SQLAlchemy URI, normally ``postgresql+psycopg2://USER@HOST:PORT/DB`` (the driver comes with
``pip install 'medvit[server]'``), or a local throwaway PostgreSQL cluster in a folder (``--postgres-data``:
initdb when the folder is new, started on a free 127.0.0.1 port, stopped on exit). Artifacts are served by the
server and stored in ``--artifacts-destination``. Ctrl-C or SIGTERM stops what was started, in reverse order.
Every problem found before the server answers is a ``ConfigError``: one line naming the item, the reason and
the fix.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.config import ConfigError

PG_ROLE = PG_DATABASE = "medvit"
SQL_BACKENDS = ("postgresql", "mysql", "sqlite", "mssql")  # the SQLAlchemy stores mlflow supports
INSTALL_POSTGRES = "install PostgreSQL (Debian: apt-get install postgresql) or put its bin folder on PATH"


# ---- checks made before anything starts ---------------------------------------------------------------
def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on (probed like uvicorn binds: with SO_REUSEADDR)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this machine ({exc.strerror}): pass an IP address "
                          "or host name of this machine, e.g. 127.0.0.1") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"--port {port}: {host}:{port} cannot be used ({exc.strerror}): stop what listens "
                              "there or pass another --port") from None


def check_backend(uri: str) -> str:
    """Connect once to a SQL store; return the URI with its password hidden, for messages.

    A URI that is not one of mlflow's SQL stores (a folder, ``file:``) is left for ``mlflow server`` to judge.
    """
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        url = make_url(uri)
    except ArgumentError:
        return uri
    if url.get_backend_name() not in SQL_BACKENDS:
        return uri
    shown = url.render_as_string(hide_password=True)
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 10} if url.get_backend_name() == "postgresql"
                               else {})
    except (ImportError, NoSuchModuleError) as exc:
        raise ConfigError(f"--backend-store-uri {shown}: its database driver is missing ({exc}): "
                          "pip install 'medvit[server]' (psycopg2 for postgresql+psycopg2://)") from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise ConfigError(f"--backend-store-uri {shown}: cannot connect ({reason}): start the database, or fix "
                          "the user, host, port or database name in the URI (createdb makes a database)") from None
    finally:
        engine.dispose()
    return shown


# ---- a local throwaway PostgreSQL ----------------------------------------------------------------------
def postgres_bindir() -> Path:
    """The folder of PostgreSQL's server programs: that of ``initdb`` on PATH, else the newest Debian one."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else -1)
    if not versions:
        raise ConfigError(f"PostgreSQL: initdb is neither on PATH nor under /usr/lib/postgresql/*/bin: "
                          f"{INSTALL_POSTGRES}")
    return versions[-1].parent


def postgres_user(user: str | None) -> str | None:
    """The OS user PostgreSQL runs as: None for ourselves, which PostgreSQL refuses when we are root."""
    root = os.geteuid() == 0
    if user is None:
        if root:
            raise ConfigError("--postgres-data: PostgreSQL refuses to run as root: pass --postgres-user nobody "
                              "(any unprivileged user), or run medvit server as that user")
        return None
    if not root:
        raise ConfigError(f"--postgres-user {user}: only root can run PostgreSQL as another user: leave it out")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise ConfigError(f"--postgres-user {user}: no such user: pass an existing one, e.g. nobody") from None
    if uid == 0:
        raise ConfigError(f"--postgres-user {user}: PostgreSQL refuses to run as root: pass an unprivileged user")
    if shutil.which("setpriv") is None:
        raise ConfigError(f"--postgres-user {user}: setpriv is not on PATH: install util-linux")
    return user


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster in ``data`` on 127.0.0.1 (TCP only, trust authentication), run as ``user``."""

    data: Path
    user: str | None = None
    bindir: Path = field(default_factory=postgres_bindir)
    port: int = 0

    @property
    def dsn(self) -> str:
        """The libpq URI of the medvit database (psql, psycopg2)."""
        return f"postgresql://{PG_ROLE}@127.0.0.1:{self.port}/{PG_DATABASE}"

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI for ``mlflow server --backend-store-uri``."""
        return self.dsn.replace("postgresql://", "postgresql+psycopg2://", 1)

    @property
    def log(self) -> Path:
        return self.data / "server.log"

    def _run(self, program: str, *args: str, fix: str, check: bool = True) -> subprocess.CompletedProcess:
        """A PostgreSQL program, as ``user`` (setpriv) when one is set; failure is a one-line ConfigError."""
        prefix: list[str] = []
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            prefix = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", "--"]
        done = subprocess.run([*prefix, str(self.bindir / program), *args], cwd=self.data, capture_output=True,
                              text=True, timeout=120)
        if check and done.returncode:
            raise ConfigError(f"--postgres-data {self.data}: {program} failed "
                              f"({_last_line(done.stderr or done.stdout)}): {fix}")
        return done

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data), fix="", check=False).returncode == 0

    def init(self) -> None:
        """initdb into a new (or empty) folder, owned by ``user``."""
        try:
            self.data.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--postgres-data {self.data}: cannot create it ({exc.strerror}): pass a folder you "
                              "can create") from None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), f"--username={PG_ROLE}", "--auth=trust", "--encoding=UTF8",
                  "--locale=C", fix=f"pass a new or empty folder that {self.user or 'you'} can create and reach")

    def start(self) -> None:
        """initdb if the folder holds no cluster yet, then start it on a free port and wait until it accepts."""
        if not (self.data / "PG_VERSION").is_file():
            self.init()
        elif self.running():
            raise ConfigError(f"--postgres-data {self.data}: a PostgreSQL server already runs on it: stop it "
                              f"(pg_ctl -D {self.data} stop) or pass another folder")
        self.port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        done = self._run("pg_ctl", "start", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.log),
                         "-o", options, fix="", check=False)
        if done.returncode:
            log = self.log.read_text(errors="replace") if self.log.is_file() else done.stderr
            raise ConfigError(f"--postgres-data {self.data}: PostgreSQL did not start ({_last_line(log)}): "
                              f"see {self.log}")

    def ensure_database(self) -> None:
        """Create the medvit database unless it exists."""
        client = ("-h", "127.0.0.1", "-p", str(self.port), "-U", PG_ROLE)
        found = self._run("psql", "-X", *client, "-d", "postgres", "-tAc",
                          f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'", fix=f"see {self.log}")
        if found.stdout.strip() != "1":
            self._run("createdb", *client, PG_DATABASE, fix=f"see {self.log}")

    def stop(self) -> None:
        """Fast shutdown (open sessions are ended), if it runs."""
        if self.running():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w",
                      fix=f"stop it by hand: pg_ctl -D {self.data} stop")


@contextlib.contextmanager
def local_postgres(data: Path, user: str | None = None) -> Iterator[LocalPostgres]:
    """A started cluster in ``data`` (made if new) with the medvit database; stopped afterwards, also on errors."""
    cluster = LocalPostgres(data.resolve(), postgres_user(user))
    try:
        cluster.start()  # refuses a cluster that already runs: that one is not ours to stop
    except BaseException:
        if cluster.port:  # pg_ctl start was run (an interrupt may leave the server up)
            cluster.stop()
        raise
    try:
        cluster.ensure_database()
        yield cluster
    finally:
        cluster.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the mlflow server process ---------------------------------------------------------------------------
def http_url(host: str, port: int) -> str:
    """The URL clients on this machine use (a wildcard bind is reached through loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def mlflow_command(uri: str, artifacts: Path, host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--serve-artifacts",
            "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port), *extra]


def server_env() -> dict[str, str]:
    """This environment with the interpreter's bin folder first on PATH, where uvicorn, gunicorn and huey live.

    mlflow 3.17 starts them as ``python -m``; the PATH keeps a version that runs them by name working.
    """
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                   os.environ.get("PATH", os.defpath)])}


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 120.0, route: str = "/health",
                 what: str = "mlflow server") -> None:
    """Wait until ``url + route`` answers 200; a ConfigError if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}{route}", timeout=2) as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise ConfigError(f"{what}: no answer on {url}{route} within {timeout:.0f} s: see its messages above")
        time.sleep(0.25)
    raise ConfigError(f"{what}: exited with code {proc.returncode} before answering {url}{route}: see its "
                      "messages above")


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group ``proc`` leads, wait for it, SIGKILL whatever of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def mlflow_process(command: list[str]) -> Iterator[subprocess.Popen]:
    """``command`` in its own session (so its uvicorn workers are stopped with it), stopped afterwards."""
    proc = subprocess.Popen(command, env=server_env(), start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals() -> Iterator[Callable[[], None]]:
    """SIGTERM stops like Ctrl-C (KeyboardInterrupt); yields ``hold``, which ignores both while cleaning up."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _interrupt)

    def hold() -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)

    try:
        yield hold
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- the command ----------------------------------------------------------------------------------------
@dataclass
class ServerOptions:
    backend_store_uri: str | None = None
    postgres_data: Path | None = None
    postgres_user: str | None = None
    artifacts: Path = Path("mlartifacts")
    host: str = "127.0.0.1"
    port: int = 5000
    mlflow_args: Sequence[str] = ()


def _check_choice(options: ServerOptions) -> None:
    if (options.backend_store_uri is None) == (options.postgres_data is None):
        raise ConfigError("the store: pass exactly one of --backend-store-uri postgresql+psycopg2://USER@HOST:PORT/DB "
                          "and --postgres-data DIR (a local PostgreSQL)")
    if options.postgres_user is not None and options.postgres_data is None:
        raise ConfigError("--postgres-user: only used with --postgres-data: leave it out")


def _artifacts_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--artifacts-destination {folder}: cannot create it ({exc.strerror}): pass a folder "
                          "you can write") from None
    return folder.resolve()


def run_server(options: ServerOptions, echo: Callable[[str], None]) -> None:
    """Start the store (if local) and ``mlflow server``; block until it exits, Ctrl-C or SIGTERM; stop both."""
    _check_choice(options)
    check_port_free(options.host, options.port)
    with contextlib.ExitStack() as stack:
        hold = stack.enter_context(stop_signals())
        uri = options.backend_store_uri
        if options.postgres_data is not None:
            cluster = stack.enter_context(local_postgres(options.postgres_data, options.postgres_user))
            uri = cluster.uri
            echo(f"PostgreSQL {cluster.data} on 127.0.0.1:{cluster.port} (store {uri})")
        shown = check_backend(uri)
        url, artifacts = http_url(options.host, options.port), _artifacts_folder(options.artifacts)
        proc = stack.enter_context(mlflow_process(mlflow_command(uri, artifacts, options.host, options.port,
                                                                 options.mlflow_args)))
        stack.callback(hold)  # runs first on the way out: a second Ctrl-C does not cut the cleanup short
        wait_healthy(proc, url)
        echo(f"MLflow server on {url}: store {shown}, artifacts {artifacts} (Ctrl-C to stop)")
        if proc.wait():
            raise ConfigError(f"mlflow server: exited with code {proc.returncode}: see its messages above")
