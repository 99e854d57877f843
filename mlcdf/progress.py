"""Progress reporting without a UI dependency in the library.

Long-running library functions take ``progress: ProgressFn`` and loop over ``progress(items, description,
total)``. The default, :func:`silent`, yields the items unchanged; the CLI passes one that draws a rich bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class ProgressFn(Protocol):
    def __call__(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]: ...


def silent(items: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    """A :class:`ProgressFn` that shows nothing."""
    yield from items
