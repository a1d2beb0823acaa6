"""What the engines take and give (options, capacity, finished results): plain types that
``jobs.engines`` (the dispatcher) and each engine module share, so neither imports the other's
module back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from cbir.errors import InvalidArgument
from cbir.options import option

R = TypeVar("R")  # a task's result

Engine = Literal["sequential", "spark"]
ENGINES: tuple[Engine, ...] = ("sequential", "spark")
Progress = Callable[[int], None]  # called with the units (e.g. images) finished so far


@dataclass(frozen=True)
class EngineOptions:
    """Where and how tasks run; built once from the CLI and passed down."""

    # option() returns a dataclasses.field (ruff cannot tell through the Literal alias)
    engine: Engine = option("sequential", choices=ENGINES, help="where tasks run")  # noqa: RUF009
    master: str | None = option(None, help="Spark master: local[*] (the default), local[N], "
                                "spark://HOST:7077, k8s://https://HOST:443, yarn")
    conf: tuple[tuple[str, str], ...] = ()  # --conf KEY=VALUE (repeatable: jobs.cli_args)
    # Ship the driver's static AWS keys to executors (with the tasks, never in the Spark conf).
    # Off by default: executors should use their own credential chain (instance role, IRSA, a
    # mounted profile).
    forward_aws_credentials: bool = option(
        False, help="ship this machine's static AWS keys (AWS_ACCESS_KEY_ID, ...) to the "
        "executors. Risky: whoever can read the job's tasks or the executors' environment sees "
        "them; prefer executor roles")
    verbose: bool = False  # show Spark's and Java's start-up logging
    app_name: str = "cbir"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InvalidArgument(f"unknown engine {self.engine!r}; known: {', '.join(ENGINES)}")


@dataclass(frozen=True)
class Capacity:
    """What the engine offers: how many tasks run at once, and cores per task."""

    parallelism: int
    threads_per_task: int | None  # None: the library's default (all cores of this machine)


@dataclass(frozen=True)
class Finished(Generic[R]):
    result: R
    attempt: int = 0  # Spark's attempt number of the successful attempt (0 = first try)
