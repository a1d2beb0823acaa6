"""GPU backfill benchmark: ``python -m bench gpu [--install] [--images N]``.

On one CUDA machine, from a clean checkout, in under 8 minutes: (``--install``: runs
``scripts/setup.sh``, then re-runs itself in ``.venv``) seeds a local moto S3 endpoint with a
few thousand JPEGs at realistic sizes (phone 4032x3024, 1920x1080, 1024x768), then runs the
real backfill (Spark local mode, Parquet parts) on CUDA with ResNet-50 (random-init weights
saved to a file: nothing downloads) and with the default EfficientNet-Lite0, each cold and warm,
plus the embedder alone on the same bytes (GPU JPEG decode + fp16 model, no S3). Prints one
JSON document: images/s per GPU for each, and GPU utilisation sampled from nvidia-smi.
Without CUDA it stops at once with one clear line and exit code 2.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SIZES = ((4032, 3024), (1920, 1080), (1024, 768))
ROOT = Path(__file__).resolve().parents[1]


class NoCuda(SystemExit):
    def __init__(self, why: str) -> None:
        super().__init__(f"python -m bench gpu: needs a CUDA GPU: {why}")


def check_cuda() -> int:
    """The number of CUDA GPUs; raises ``NoCuda`` (exit code 2 with one line) otherwise."""
    if shutil.which("nvidia-smi") is None:
        raise NoCuda("nvidia-smi not found (no NVIDIA driver on this machine)")
    import torch

    if not torch.cuda.is_available():
        raise NoCuda(f"torch {torch.__version__} sees no CUDA device")
    return int(torch.cuda.device_count())


class GpuSampler:
    """nvidia-smi utilisation.gpu (%) and memory.used (MiB) every ``period_s`` meanwhile."""

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits"]
        while not self._stop.wait(self.period_s):
            out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
            for line in out.strip().splitlines():
                util, mem = (float(x) for x in line.split(","))
                self.samples.append((util, mem))

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"samples": 0}
        utils = [u for u, _ in self.samples]
        return {"samples": len(utils), "util_mean_pct": round(sum(utils) / len(utils), 1),
                "util_max_pct": max(utils),
                "memory_max_mib": max(m for _, m in self.samples)}


def make_jpegs(count: int) -> list[bytes]:
    """``count`` JPEGs cycling through the bundled photos at the three sizes (quality 90)."""
    from PIL import Image

    from demo.photos import bundled_photos

    distinct = []
    for photo in bundled_photos()[:8]:
        for w, h in SIZES:
            buf = io.BytesIO()
            Image.fromarray(photo.pixels).resize((w, h)).save(buf, "JPEG", quality=90)
            distinct.append(buf.getvalue())
    return [distinct[i % len(distinct)] for i in range(count)]


def seed_bucket(images: list[bytes]) -> str:
    from concurrent.futures import ThreadPoolExecutor

    from cbir import storage

    bucket = f"gpu-{uuid.uuid4().hex[:8]}"
    client = storage.s3_client()
    client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=f"img/{kv[0]:06d}.jpg",
                                                   Body=kv[1]), enumerate(images)))
    return bucket


def resnet50_weights(work: Path) -> str:
    import torch
    import torchvision

    torch.manual_seed(0)
    path = work / "resnet50-random.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return str(path)


def backfill(bucket: str, model: str, weights: str | None, run: str, gpus: int
             ) -> dict[str, Any]:
    from jobs.embed.job import JobOptions, build_config, run_backfill
    from jobs.engines import EngineOptions

    config = build_config(JobOptions(
        input=f"s3://{bucket}/img", output=f"s3://{bucket}/out/{model}-{run}", model=model,
        weights=weights, device="cuda", runtime="torch", objects_per_task=512, io_threads=32))
    with GpuSampler() as sampler:
        t0 = time.perf_counter()
        manifest = run_backfill(config, EngineOptions("spark", f"local[{2 * gpus}]"),
                                show_progress=False)
        dt = time.perf_counter() - t0
    rate = manifest.num_images / dt
    return {"images": manifest.num_images, "errors": manifest.num_errors, "wall_s": round(dt, 2),
            "images_per_s": round(rate, 1), "images_per_s_per_gpu": round(rate / gpus, 1),
            "gpu": sampler.summary()}


def embed_only(images: list[bytes], model: str, weights: str | None) -> dict[str, Any]:
    """The embedder alone on the bytes: GPU decode + fp16 model, one GPU, no S3 or Spark."""
    from cbir.embedding import load_embedder

    emb = load_embedder(model, weights, "cuda", "torch")
    emb.embed_bytes(images[: emb.batch_size])  # warm-up: cuDNN autotune, nvJPEG handles
    with GpuSampler() as sampler:
        t0 = time.perf_counter()
        res = emb.embed_bytes(images)
        dt = time.perf_counter() - t0
    return {"images": len(res.ok), "batch": emb.batch_size,
            "images_per_s_per_gpu": round(len(res.ok) / dt, 1), "gpu": sampler.summary()}


def run_models(images: list[bytes], bucket: str, work: Path, gpus: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model, weights in (("resnet50", resnet50_weights(work)), ("efficientnet_lite0", None)):
        out[model] = {"embed_only": embed_only(images, model, weights),
                      "backfill_cold": backfill(bucket, model, weights, "cold", gpus),
                      "backfill_warm": backfill(bucket, model, weights, "warm", gpus)}
    return out


def run(images_count: int) -> dict[str, Any]:
    gpus = check_cuda()
    from moto.server import ThreadedMotoServer

    for key, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        host, port = server.get_host_and_port()
        os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
        images = make_jpegs(images_count)
        bucket = seed_bucket(images)
        import torch

        doc: dict[str, Any] = {
            "benchmark": "gpu", "gpus": gpus, "gpu_name": torch.cuda.get_device_name(0),
            "images": len(images), "sizes": [f"{w}x{h}" for w, h in SIZES],
            "models": run_models(images, bucket, work, gpus)}
        r50 = doc["models"]["resnet50"]["backfill_warm"]["images_per_s_per_gpu"]
        doc["target_resnet50_backfill_per_gpu"] = {"value": r50, "op": ">=", "bound": 6000,
                                                   "met": r50 >= 6000}
        return doc
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _install_and_reexec(argv: list[str]) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True)
    venv_python = ROOT / ".venv" / "bin" / "python"
    rest = [a for a in argv if a != "--install"]
    os.execv(str(venv_python), [str(venv_python), "-m", "bench", "gpu", *rest])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench gpu",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true",
                        help="run scripts/setup.sh first (a clean checkout), then the benchmark")
    parser.add_argument("--images", type=int, default=3000, help="JPEGs seeded into S3")
    args = parser.parse_args(argv)
    if args.install:
        _install_and_reexec(list(sys.argv[2:] if argv is None else argv))
    try:
        doc = run(args.images)
    except NoCuda as exc:
        print(exc.code, file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2))
    return 0
