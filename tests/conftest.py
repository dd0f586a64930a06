"""Suite-wide settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny tensors: threads add only overhead, and on a shared 2-core machine OpenMP
    spinning made small convolutions ~10x slower. Notebook kernels are separate processes and keep
    their own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
