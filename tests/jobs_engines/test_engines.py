"""The distribution layer's pure parts: the sequential engine, progress in units, what the
Spark engine ships to executors, the one-line task failure, and the master checks."""

from __future__ import annotations

import pytest

from cbir.errors import InvalidArgument, Unavailable
from jobs import engines
from jobs.engines import EngineOptions
from jobs.spark_engine import executor_env, task_failure_line
from jobs.spark_session import check_master
from tests.conftest import free_port


def _double(task: int, shared: int) -> int:
    return task * shared


def test_sequential_runs_every_task_in_order_and_reports_units() -> None:
    seen: list[int] = []
    done = engines.run([3, 1, 2], _double, EngineOptions("sequential"), shared=10,
                       units=lambda t: t, progress=seen.append)
    assert [f.result for f in done] == [30, 10, 20] and {f.attempt for f in done} == {0}
    assert seen == [3, 4, 6]  # cumulative units (e.g. images), not tasks
    assert engines.capacity(EngineOptions("sequential")) == engines.Capacity(1, None)


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown engine 'dask'"):
        EngineOptions("dask")  # type: ignore[arg-type]


def test_executors_get_the_s3_location_never_keys_unless_asked(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_S3_ADDRESSING_STYLE", "path")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-test")
    shipped = executor_env(EngineOptions("spark"))
    assert shipped["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert shipped["AWS_REGION"] == "eu-west-1" and shipped["AWS_S3_ADDRESSING_STYLE"] == "path"
    assert "AWS_ACCESS_KEY_ID" not in shipped and "AWS_SECRET_ACCESS_KEY" not in shipped
    forwarded = executor_env(EngineOptions("spark", forward_aws_credentials=True))
    assert forwarded["AWS_SECRET_ACCESS_KEY"] == "secret-test"
    # What the user set with --conf spark.executorEnv.X wins.
    given = executor_env(EngineOptions("spark", conf=(
        ("spark.executorEnv.AWS_ENDPOINT_URL", "http://other:9000"),)))
    assert "AWS_ENDPOINT_URL" not in given


def test_a_failed_job_is_one_line_naming_the_task_error() -> None:
    java = (
        "An error occurred while calling o12.collectAndServe.\n"
        ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage "
        "0.0 failed 4 times, most recent failure: Lost task 1.3 (TID 7):\n"
        "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        '  File "/x/worker.py", line 1, in main\n'
        "    raise Unavailable(...)\n"
        "cbir.errors.Unavailable: s3://b/k: body stream cut 5 times: reset\n"
        "\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(X.scala:1)\n"
    )
    assert task_failure_line(java) == "Unavailable: s3://b/k: body stream cut 5 times: reset"
    crashed = ("x\norg.apache.spark.SparkException: Job aborted due to stage failure: Python "
               "worker exited unexpectedly (crashed)\n\tat org.apache...")
    assert task_failure_line(crashed).startswith("org.apache.spark.SparkException: Job aborted")


@pytest.mark.parametrize("master", ["local", "local[*]", "local[4]", "local[2,3]", "yarn",
                                    "k8s://https://k8s:443", "local-cluster[2,1,1024]"])
def test_well_formed_masters_pass(master: str) -> None:
    check_master(master)


def test_unreachable_standalone_master_fails_fast() -> None:
    port = free_port()
    with pytest.raises(Unavailable, match=f"cannot reach the Spark master spark://127.0.0.1:{port}"):
        check_master(f"spark://127.0.0.1:{port}", timeout_s=2)
