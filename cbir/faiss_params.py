"""Per-call Faiss search parameters, shared by the index build (tuning) and the shard server.

Parameters are passed per ``search`` call (``faiss.SearchParametersIVF`` / ``...HNSW``) instead of
being set on the index, so concurrent requests with different nprobe/efSearch never race. The
manifest keys are the proto's ``SearchParams`` field names: ``nprobe`` and ``ef_search``.
"""

from __future__ import annotations

from typing import Any

import faiss as _faiss

# The stubs shipped with faiss-cpu lag the SWIG module (no SearchParametersHNSW, ...).
faiss: Any = _faiss

NPROBE = "nprobe"
EF_SEARCH = "ef_search"


def _inner(index: Any) -> Any:
    """The index under IDMap/IDMap2 and pre-transform (OPQ/PCA) wrappers."""
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, faiss.IndexPreTransform | faiss.IndexIDMap | faiss.IndexIDMap2):
            index = faiss.downcast_index(index.index)
        else:
            return index


def param_name(index: Any) -> str | None:
    """Which search parameter tunes ``index``: "nprobe" (IVF), "ef_search" (HNSW) or None."""
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        return NPROBE
    if isinstance(inner, faiss.IndexHNSW):
        return EF_SEARCH
    return None


def nlist(index: Any) -> int:
    inner = _inner(index)
    return int(inner.nlist) if isinstance(inner, faiss.IndexIVF) else 0


def search_parameters(index: Any, params: dict[str, int], selector: Any = None) -> Any | None:
    """A ``faiss.SearchParameters`` object for one call, or None for the index's own settings.

    Unknown or zero values are ignored (0 = "the tuned default" in the proto). ``selector``
    (a ``faiss.IDSelector`` over image ids) restricts the call to the ids it accepts: it goes on
    the innermost parameters, which IDMap wrappers translate to their internal row numbers. A
    fresh object per call matters: IndexIDMap swaps the selector of the object it is given for
    the duration of the call."""
    name = param_name(index)
    value = int(params.get(name, 0)) if name else 0
    if (not name or value <= 0) and selector is None:
        return None
    # IVF refuses a plain SearchParameters, and a fresh SearchParametersIVF/HNSW carries
    # Faiss's defaults, not the index's: a selector-only call repeats the index's own value.
    if name == NPROBE:
        nprobe = value if value > 0 else int(_inner(index).nprobe)
        inner_params: Any = faiss.SearchParametersIVF(nprobe=min(nprobe, nlist(index)))
    elif name == EF_SEARCH:
        ef = value if value > 0 else int(_inner(index).hnsw.efSearch)
        inner_params = faiss.SearchParametersHNSW(efSearch=ef)
    else:
        inner_params = faiss.SearchParameters()
    if selector is not None:
        inner_params.sel = selector
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexPreTransform):
        wrapped = faiss.SearchParametersPreTransform()
        wrapped.index_params = inner_params
        # keep the inner object alive as long as the wrapper (SWIG holds a raw pointer)
        wrapped.referenced_objects = [inner_params]
        return wrapped
    return inner_params
