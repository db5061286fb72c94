"""The installed names: every part lives under the ``dora`` namespace."""

import importlib


def test_parts_import_under_dora_namespace() -> None:
    for name in ("dora", "dora.gateway", "dora.scheduler", "dora.workers", "dora.builtin_ops"):
        module = importlib.import_module(name)
        assert module.__name__ == name
