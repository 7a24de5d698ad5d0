import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(_fixed_threads):
    # These models are tiny: one thread avoids intra-op synchronisation, which on a shared
    # 2-core machine made a decoding step 25x slower than single-threaded.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
