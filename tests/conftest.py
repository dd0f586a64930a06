"""Suite-wide settings."""
import sys
import threading

import pytest
import torch
import tqdm

if "mutmut" in sys.modules:
    # Under make mutation every test run is a process forked from one server, and tqdm's default write
    # lock is a multiprocessing semaphore that all of them share. A run stopped while holding it (a
    # mutant past its time limit) left every later run that draws a progress bar waiting on it forever,
    # and those were counted as timeouts, i.e. killed. A thread lock is private to each process.
    tqdm.tqdm.set_lock(threading.RLock())


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny tensors: threads add only overhead, and on a shared 2-core machine OpenMP
    spinning made small convolutions ~10x slower. Notebook kernels are separate processes and keep
    their own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
