"""The set of protocols: every module in this package that defines an `Adapter` with a `name`.

Nothing lists the protocols by hand. Adding one is a new module here (and its tests); config
validation, `warmgate schema`, `warmgate check`, the entrypoint and the probe all read the set
from `adapters()`. Support modules (base, health, this one) define no named adapter and are skipped.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType, ModuleType

from warmgate.config import ConfigError, ServerConfig, expected_names
from warmgate.protocols.base import Adapter

PACKAGE = "warmgate.protocols"


class RegistryError(Exception):
    """Two protocol modules claim the same name: a defect of the installation, not of the config."""


def adapters(package: str = PACKAGE) -> Mapping[str, type[Adapter]]:
    """Protocol name -> adapter class, sorted by name, for every protocol module in `package`."""
    found: dict[str, type[Adapter]] = {}
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__):
        if info.name.startswith("_"):
            continue
        for adapter in _declared_adapters(importlib.import_module(f"{package}.{info.name}")):
            other = found.get(adapter.name)
            if other is not None and other is not adapter:
                raise RegistryError(
                    f"protocol {adapter.name!r} is defined twice: {other.__module__} and {adapter.__module__}"
                )
            found[adapter.name] = adapter
    return MappingProxyType(dict(sorted(found.items())))


def _declared_adapters(module: ModuleType) -> list[type[Adapter]]:
    # Only classes defined in the module itself: an adapter imported from elsewhere is not a
    # second declaration of that protocol.
    return [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, Adapter)
        and value.__module__ == module.__name__
        and value.name
        and not inspect.isabstract(value)
    ]


def make_adapter(server: ServerConfig, catalog: Mapping[str, type[Adapter]] | None = None) -> Adapter:
    """The adapter for `server.protocol`. A config validated without the registry is checked here,
    so an unknown protocol or a broken protocol rule is still a one-line ConfigError."""
    known = adapters() if catalog is None else catalog
    adapter = known.get(server.protocol)
    if adapter is None:
        raise ConfigError(f"server.protocol: must be one of {expected_names(known)}, got {server.protocol!r}")
    try:
        adapter.check_server(server)
    except ValueError as exc:
        raise ConfigError(f"server: {exc}") from None
    return adapter(server)
