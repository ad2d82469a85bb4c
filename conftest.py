"""Root conftest: it also applies to the docstring examples of ``src/`` (``--doctest-modules``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # doctest's runner resets pdb, which walks ``linecache.cache``; SQLAlchemy registers its generated
    # ``__init__`` sources there and drops them from a weakref callback when the (cyclic) class is collected.
    # MLflow creates such classes with every store it opens, so a collection during that walk raised
    # KeyError in a worker that had run MLflow tests. No cyclic collection during a docstring example.
    if not isinstance(item, pytest.DoctestItem) or not gc.isenabled():
        return (yield)
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()
