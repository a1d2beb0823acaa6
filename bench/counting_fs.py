"""A pyarrow filesystem that counts the bytes read through it: how the build bench (and the
one-read test) measure what the index build reads of an embeddings run."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


class _CountingFile:
    """A readable file that adds what it reads to its handler's total."""

    def __init__(self, inner: pa.NativeFile, handler: CountingHandler) -> None:
        self.inner = inner
        self.handler = handler
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(None if n is None or n < 0 else n)
        self.handler.bytes_read += len(data)
        return bytes(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.inner.seek(offset, whence))

    def tell(self) -> int:
        return int(self.inner.tell())

    def size(self) -> int:
        return int(self.inner.size())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class CountingHandler(pafs.FileSystemHandler):
    """Delegates to ``inner``; ``bytes_read`` counts every byte read from an input file."""

    def __init__(self, inner: pafs.FileSystem) -> None:
        self.inner = inner
        self.bytes_read = 0

    def get_type_name(self) -> str:
        return "counting"

    def normalize_path(self, path: str) -> str:
        return str(self.inner.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> Any:
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> Any:
        return self.inner.get_file_info(selector)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.PythonFile(_CountingFile(self.inner.open_input_file(path), self), mode="r")

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    def equals(self, other: Any) -> bool:
        return other is self

    def _read_only(self, *_args: Any) -> Any:
        raise NotImplementedError("the counting filesystem is read-only")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
    delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only


class CountingFilesystem:
    """Wraps a ``(uri) -> (filesystem, path)`` factory; every filesystem it hands out counts
    into the same total."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.handlers: list[CountingHandler] = []

    def __call__(self, uri: str) -> tuple[pafs.FileSystem, str]:
        fs, path = self.factory(uri)
        handler = CountingHandler(fs)
        self.handlers.append(handler)
        return pafs.PyFileSystem(handler), path

    @property
    def bytes_read(self) -> int:
        return sum(h.bytes_read for h in self.handlers)
