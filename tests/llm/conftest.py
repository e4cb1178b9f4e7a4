"""The real LLM server's fixtures (tests/support/llm_fixtures.py)."""

from tests.support.llm_fixtures import llm_server, start_llm_server, tiny_llm_model  # noqa: F401
