"""One place that starts Spark: local mode by default, any master when given.

The executors' Python is the driver's (``PYSPARK_PYTHON``) so they import the same cbir; the UI
is off and the driver binds to loopback in local mode because these machines have no other
network.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import TYPE_CHECKING

from cbir.errors import FailedPrecondition

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[*]"
MAX_TASK_FAILURES = 4  # a task is retried on another attempt up to 3 times
_LOCAL = re.compile(r"^local(?:\[(\*|\d+)\])?$")


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


def get_or_create_session(
    master: str = DEFAULT_MASTER,
    app_name: str = "cbir",
    conf: dict[str, str] | None = None,
) -> SparkSession:
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    is_local = master.startswith("local")
    if is_local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(with_local_retries(master))
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # One task per planned unit: Spark must not merge or speculate them (each writes a part).
        .config("spark.speculation", "false")
        .config("spark.task.maxFailures", str(MAX_TASK_FAILURES))
        .config("spark.python.worker.reuse", "true")
    )
    if is_local:
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
