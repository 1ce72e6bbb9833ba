"""Shared fixtures: every test session builds the tiny model once, into its own cache."""
import os

# huggingface_hub reads this once, at import: set it before anything imports transformers
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """builtin:tiny resolves into a per-session directory, never the user's ~/.cache."""
    old = os.environ.get("POSTTRAIN_CACHE")
    os.environ["POSTTRAIN_CACHE"] = str(tmp_path_factory.mktemp("posttrain-cache"))
    yield
    if old is None:
        os.environ.pop("POSTTRAIN_CACHE", None)
    else:
        os.environ["POSTTRAIN_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_path(_private_cache):
    """Directory of the embedded tiny model (built on first use)."""
    from posttrain.models.tiny import resolve_builtin
    return resolve_builtin("builtin:tiny")
