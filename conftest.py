"""Root conftest: it also applies to the docstring examples of ``src/`` (``--doctest-modules``)."""

from __future__ import annotations

import gc

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # doctest's runner resets pdb, which walks ``linecache.cache``; SQLAlchemy registers its generated
    # ``__init__`` sources there and drops them from a weakref callback when the class is collected. MLflow
    # creates such classes with every store it opens, so a collection during that walk raised KeyError in a
    # worker that ran MLflow tests before. Collecting first leaves no such garbage pending.
    if isinstance(item, pytest.DoctestItem):
        gc.collect()
