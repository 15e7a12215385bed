from typing import Any, Callable

from ._xor import Key

def cached_fields(entries: list[Any], k: int, cache: dict[Key, tuple], skip: Key | None,
                  unreachable: set[Key] | None, epoch: Any, now: float,
                  refresh: Callable[[Key, Any, tuple | None], Any]) -> list[Any]: ...
