"""Hypothesis strategies for generated Ollama model stores (tests/support/storegen.py holds what a
store may contain; this draws its choices through hypothesis, so a failing store shrinks to a
small one). `scripts/make-sample-store --random SEED DIR` writes the same kind of store from a
seed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hypothesis import strategies as st

from tests.support.storegen import DEFAULT, Options, StoreSpec, draw_store

T = TypeVar("T")


class HypothesisChooser:
    """Chooser (tests/support/storegen.py) whose every choice is a hypothesis draw."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self._draw = draw

    def integer(self, low: int, high: int) -> int:
        value: int = self._draw(st.integers(low, high))
        return value

    def boolean(self) -> bool:
        value: bool = self._draw(st.booleans())
        return value

    def choice(self, options: Sequence[T]) -> T:
        value: T = self._draw(st.sampled_from(options))
        return value

    def text(self, first: str, later: str, low: int, high: int) -> str:
        head: str = self._draw(st.sampled_from(first))
        if high <= 1:
            return head
        tail: str = self._draw(st.text(alphabet=later, min_size=max(0, low - 1),
                                       max_size=high - 1))
        return head + tail


@st.composite
def _stores(draw: Callable[[st.SearchStrategy[Any]], Any], options: Options) -> StoreSpec:
    return draw_store(HypothesisChooser(draw), options)


def stores(options: Options = DEFAULT) -> st.SearchStrategy[StoreSpec]:
    """Valid Ollama stores (see tests/support/storegen.py for what they cover)."""
    return _stores(options)
