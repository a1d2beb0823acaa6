"""One place that starts Spark: local mode by default, any master when given.

The executors' Python is the driver's (``PYSPARK_PYTHON``) so they import the same cbir; the UI
is off and the driver binds to loopback in local mode because these machines have no other
network. A ``spark://`` master is probed with a plain TCP connect first: a wrong host or port
fails in seconds with one line instead of Spark's minute of retries and a Java stack.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from cbir import ARROW_POOL_ENV
from cbir.errors import FailedPrecondition, InvalidArgument, Unavailable

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[*]"
MAX_TASK_FAILURES = 4  # a task is retried on another attempt up to 3 times
MASTER_CONNECT_TIMEOUT_S = 5.0
_LOCAL = re.compile(r"^local(?:\[(\*|\d+)\])?$")
_MASTER_FORMS = re.compile(
    r"^(local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|yarn|"
    r"spark://[^/\s]+|k8s://\S+|mesos://\S+)$"
)
# Spark and Java log INFO/WARN start-up chatter (native-hadoop, loopback address, log level
# hints) that says nothing to a cbir user; only errors are shown unless -v.
_QUIET_LOG4J2 = """\
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{HH:mm:ss}} %p %c{{1}}: %m%n%ex
# The logger of PySpark's gateway (its main class) sets the shell's level; configured here,
# Spark does not override it to WARN nor print "Setting default log level".
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = {level}
"""


def with_local_retries(master: str, max_failures: int = MAX_TASK_FAILURES) -> str:
    """Local mode ignores ``spark.task.maxFailures`` (``local[N]`` never retries a failed task,
    e.g. a Python worker that died): only ``local[N,F]`` sets it. Add F where it is missing."""
    match = _LOCAL.match(master)
    if not match:
        return master  # local[N,F], local-cluster[...], clusters: left as given
    return f"local[{match.group(1) or 1},{max_failures}]"


def check_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise FailedPrecondition(
            "Java was not found: Spark needs a Java 17+ runtime on PATH or in JAVA_HOME "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )


def check_master(master: str, timeout_s: float = MASTER_CONNECT_TIMEOUT_S) -> None:
    """Refuse a malformed master, and a standalone master no TCP connection reaches."""
    if not _MASTER_FORMS.match(master):
        raise InvalidArgument(
            f"--master {master!r} is not a Spark master: use local[*], local[N], "
            "spark://HOST:PORT, k8s://https://HOST:PORT or yarn"
        )
    if not master.startswith("spark://"):
        return
    errors = []
    for address in master.removeprefix("spark://").split(","):  # HA: any live master will do
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"--master {master!r}: expected spark://HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
            return
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
    raise Unavailable(f"cannot reach the Spark master {master} ({'; '.join(errors)}): is it "
                      "running, and is that its host and port?")


@lru_cache(maxsize=2)
def _log4j2_file(level: str) -> str:
    fd, path = tempfile.mkstemp(prefix="cbir-log4j2-", suffix=".properties")
    with os.fdopen(fd, "w") as fh:
        fh.write(_QUIET_LOG4J2.format(level=level))
    return path


def _active_master() -> str | None:
    from pyspark import SparkContext

    active = SparkContext._active_spark_context
    return active.master if active is not None else None


def _same_master(active: str, wanted: str) -> bool:
    """Any local session serves a local request (tests share one); a cluster must match."""
    return active == wanted or (active.startswith("local") and wanted.startswith("local"))


def _base_conf(master: str, verbose: bool) -> dict[str, str]:
    conf = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",  # cbir prints its own progress in images
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # One task per planned unit: Spark must not merge or speculate them (each writes a part).
        "spark.speculation": "false",
        "spark.task.maxFailures": str(MAX_TASK_FAILURES),
        "spark.python.worker.reuse": "true",
        f"spark.executorEnv.{ARROW_POOL_ENV}": "system",  # see cbir/__init__.py
        "spark.driver.extraJavaOptions":
            f"-Dlog4j2.configurationFile=file:{_log4j2_file('info' if verbose else 'error')}",
    }
    if master.startswith("local"):
        conf["spark.driver.host"] = conf["spark.driver.bindAddress"] = "127.0.0.1"
    return conf


def get_or_create_session(
    master: str = DEFAULT_MASTER,
    app_name: str = "cbir",
    conf: Mapping[str, str] | None = None,
    verbose: bool = False,
) -> SparkSession:
    """The process's session; ``conf`` (e.g. ``--conf``) overrides cbir's defaults."""
    check_java()
    check_master(master)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    active = _active_master()
    if active is not None and not _same_master(active, with_local_retries(master)):
        # getOrCreate would silently hand back the running session on the other master.
        raise FailedPrecondition(f"this process already runs Spark on {active}, not {master}")
    builder = SparkSession.builder.master(with_local_retries(master)).appName(app_name)
    for key, value in {**_base_conf(master, verbose), **(conf or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("INFO" if verbose else "ERROR")
    return session
