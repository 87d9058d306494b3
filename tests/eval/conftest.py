"""A real `transformers serve` of the tiny Llama on loopback, shared by the eval tests' HTTP judge paths."""

import pytest

from chatalign.generation.params import GenerationArguments


@pytest.fixture(scope="session")
def served_tiny_judge(tiny_model_dir):
    """(base URL, model name) of `transformers serve` for the tiny model, for the whole session."""
    from chatalign.generation.servers import free_ports, serve

    args = GenerationArguments(backend="server", engine="transformers", server_ports=free_ports(1),
                               server_start_timeout=180)
    with serve(str(tiny_model_dir), args) as endpoints:
        yield list(endpoints)[0], endpoints.model
