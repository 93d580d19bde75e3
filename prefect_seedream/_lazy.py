"""Lazy re-exports for the packages' `__init__` modules, so importing a package stays cheap.

It also keeps each module importable under one name only. The folders `flows/`, `tasks/`,
`blocks/`, `deployments/` and `sandbox/` are installed as `prefect_seedream.flows`, ...; from a
checkout (or a Prefect project with its own `flows/`) a bare `import flows` would load a second
copy of our modules under another name, and with it a second registration of every block. Such an
import fails at once, naming the one that works.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

ROOT = "prefect_seedream"


def check_import_name(package: str) -> None:
    """Refuse a package of ours imported under a name outside `prefect_seedream`.

    Raises:
        ImportError: naming the import that works.
    """
    if package != ROOT and not package.startswith(ROOT + "."):
        raise ImportError(
            f"{package!r} is part of prefect-seedream and must be imported as "
            f"'{ROOT}.{package}' (e.g. `from {ROOT}.{package} import ...`), so that its "
            "modules and blocks exist once"
        )


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package` that import `name` from `exports[name]` on
    first use and cache it in the package.

    Args:
        package: the calling package's `__name__`; it must live under `prefect_seedream`.
        exports: public name -> absolute module that defines it.

    Raises:
        ImportError: if `package` was imported under a name outside `prefect_seedream`.
    """
    check_import_name(package)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
