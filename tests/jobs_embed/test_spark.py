"""Every engine's run of the same plan gives the sequential run's rows (real local Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from cbir import storage
from jobs.embed.job import run_backfill
from jobs.engines import ENGINES, EngineOptions
from tests.jobs_embed.conftest import LOCAL_SPARK, SEQUENTIAL, ImageBucket, config_for
from tests.jobs_embed.helpers import read_embeddings, read_errors, vectors

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _options(engine: str, request: pytest.FixtureRequest) -> EngineOptions:
    if engine == "spark":
        request.getfixturevalue("spark")  # the shared local session
        return LOCAL_SPARK
    return EngineOptions(engine)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_equals_sequential(image_bucket: ImageBucket, engine: str,
                                        request: pytest.FixtureRequest) -> None:
    b = image_bucket.bucket
    out = f"{b}-out"  # outputs outside the input: one run must not list the other's parts
    storage.s3_client().create_bucket(Bucket=out)
    seq = config_for(f"s3://{b}", f"s3://{out}/seq", per_task=5)
    par = config_for(f"s3://{b}", f"s3://{out}/{engine}", per_task=5)
    options = _options(engine, request)
    m_seq = run_backfill(seq, SEQUENTIAL, show_progress=False)
    m_par = run_backfill(par, options, show_progress=False)

    assert m_par.parts == m_seq.parts and m_par.error_parts == m_seq.error_parts
    assert (m_par.num_images, m_par.num_errors) == (m_seq.num_images, m_seq.num_errors)
    t_seq, t_par = read_embeddings(seq.output), read_embeddings(par.output)
    for col in ("image_id", "key", "shard", "width", "height", "bytes"):
        assert t_par.column(col).to_pylist() == t_seq.column(col).to_pylist(), col
    assert np.abs(vectors(t_par) - vectors(t_seq)).max() < 1e-5
    assert read_errors(par.output) == read_errors(seq.output)

    again = run_backfill(par, options, show_progress=False)
    assert (again.model_extra or {})["tasks_run"] == 0 and again.num_images == m_par.num_images
