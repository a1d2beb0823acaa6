"""Request limits shared by every entry point; each one has a clear error when exceeded."""

from __future__ import annotations

from dataclasses import dataclass

from cbir.options import option


@dataclass(frozen=True)
class Limits:
    max_k: int = 1000
    max_ef_search: int = 16_384  # HNSW candidate list; beyond this a query is a denial of service
    max_batch: int = 1024  # query vectors per request (also queries per SearchBatch)
    # Image queries per SearchBatch: each costs a CNN forward pass (tens of ms on a CPU).
    max_batch_images: int = 64
    max_message_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 64_000_000  # decompression-bomb guard (PIL's is ~89M)
    # Image queries: pixels actually decoded (a JPEG counts after its DCT-domain reduction, so
    # any JPEG under max_image_pixels fits; a PNG/WebP/GIF/BMP/TIFF up to 3840x2160 + a bit).
    # Decoding needs <= ~16 bytes per pixel (RGBA composited on white), so <= ~134 MB per
    # image; see docs/embedding.md for the peak per coordinator.
    max_query_image_pixels: int = 8_388_608
    max_deadline_s: float = 60.0
    # The one limit an operator sets per coordinator (--deadline-ms); the rest are hard caps.
    default_deadline_s: float = option(10.0, flag="--deadline-ms", scale=0.001, positive=True,
                                       metavar="MS", help="deadline of requests that set none")


DEFAULT_LIMITS = Limits()
