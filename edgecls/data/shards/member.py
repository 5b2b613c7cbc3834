"""One image inside a tar shard, addressed by byte range so any process can read it without the tar index.

A dataset's samples are (source, label) pairs, where a source is a file path or a `Member`. The readers
(`edgecls.data.images.load_rgb`, the cache decoders, the gpu fill's reader processes) open either one
through `open_source` / `read_source`, so everything behind the dataset scan works on shards unchanged.
Free of torch and PIL: the gpu fill's reader processes import it.
"""

from __future__ import annotations

import io
import os
from typing import NamedTuple


class Member(NamedTuple):
    """An image file stored in a tar: the shard's absolute path, the byte range of its data, its member name."""

    shard: str
    offset: int
    size: int
    name: str

    def __str__(self) -> str:
        """How reports and prediction records name it: the shard path, then the member name inside it."""
        return f"{self.shard}/{self.name}"

    def read(self) -> bytes:
        with open(self.shard, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.shard}: shorter than its index says (truncated shard?); pack it again")
        return data


def as_source(value) -> str | Member:
    """A source back from JSON (a Member arrives as a list) or from a caller (a path-like)."""
    if isinstance(value, Member):
        return value
    if isinstance(value, (list, tuple)):
        return Member(*value)
    return os.fspath(value)


def open_source(source):
    """Something PIL's Image.open takes: the path itself, or a Member's bytes as a file object."""
    return io.BytesIO(source.read()) if isinstance(source, Member) else source


def read_source(source) -> bytes:
    if isinstance(source, Member):
        return source.read()
    with open(source, "rb") as fh:
        return fh.read()


def source_stat(source, _shards: dict | None = None) -> str:
    """What identifies a source's content for a cache key: path, size and mtime (of the shard, plus the range)."""
    if isinstance(source, Member):
        memo = _shards if _shards is not None else {}
        if source.shard not in memo:
            st = os.stat(source.shard)
            memo[source.shard] = f"{os.path.abspath(source.shard)}|{st.st_size}|{st.st_mtime_ns}"
        return f"{memo[source.shard]}|{source.offset}+{source.size}"
    st = os.stat(source)
    return f"{os.path.abspath(source)}|{st.st_size}|{st.st_mtime_ns}"
