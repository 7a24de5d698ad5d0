"""core.threads.num_threads sets and restores the thread counts."""

import pytest
import torch
from threadpoolctl import threadpool_info

from minirepro.core.threads import num_threads


def test_num_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    with num_threads(1, blas=True):
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), num_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with num_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"), num_threads(0):
        pass


def test_process_pool_workers_run_with_the_given_threads():
    from minirepro.core.threads import process_pool

    with process_pool(2, threads=1) as pool:
        assert list(pool.map(torch.get_num_threads, [])) == []
        counts = [pool.submit(torch.get_num_threads).result() for _ in range(2)]
    assert counts == [1, 1]
    for workers, threads in [(0, 1), (1, 0)]:
        with pytest.raises(ValueError, match="workers and threads must be >= 1"):
            process_pool(workers, threads)
