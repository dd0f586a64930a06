"""lab.commands.bench: FLOP counts that match a hand count, and a table row that runs at tiny size on a CPU."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lab.dit import dit
from lab.commands import bench


def test_flop_counter_counts_a_linear_layer_as_2_b_in_out():
    lin = torch.nn.Linear(7, 5)
    with FlopCounterMode(display=False) as counter:
        lin(torch.randn(3, 7))
    assert counter.get_total_flops() == 2 * 3 * 7 * 5


def hand_count_forward(model, x, t, y):
    """2·rows·in·out for every nn.Linear call (rows read off its input), plus attention's two
    matmuls per block: QKᵀ and AV, each 2·B·N²·width multiply-adds over all heads."""
    flops = []
    hooks = [m.register_forward_hook(lambda m, inp, out: flops.append(2 * inp[0].numel() // m.in_features
                                                                      * m.in_features * m.out_features))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(x, t, y)
    for h in hooks:
        h.remove()
    B, N = x.shape[:2]
    blocks = [(model.width, len(model.blocks))]
    if model.ddt_width is not None:
        blocks.append((model.ddt_width, len(model.ddt_blocks)))
    return sum(flops) + sum(2 * 2 * B * N * N * w * depth for w, depth in blocks)


def test_tiny_dit_forward_flops_match_the_hand_count():
    torch.manual_seed(0)
    for ddt_width in (None, 96):
        model = dit("tiny", in_dim=8, num_tokens=16, num_classes=10, ddt_width=ddt_width)
        x, t, y = torch.randn(3, 16, 8), torch.rand(3), torch.randint(10, (3,))
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x, t, y)
        assert counter.get_total_flops() == hand_count_forward(model, x, t, y), ddt_width


def test_step_flops_is_linear_in_the_batch_and_three_forwards():
    """Backward of a matmul costs two matmuls of the same size: forward + backward = 3 x forward."""
    model = dit("tiny", in_dim=8, num_tokens=16, num_classes=10)
    x, t, y = torch.randn(5, 16, 8), torch.rand(5), torch.zeros(5, dtype=torch.long)
    fwd = hand_count_forward(model, x, t, y)
    # the first layers' inputs need no gradient, so their backward skips the input-gradient matmul:
    # bound the count between 2x and 3x the forward, and check it scales exactly with the batch
    full = bench.step_flops(model, 5, 16, 8, torch.device("cpu"), count_batch=5)
    assert 2 * fwd < full <= 3 * fwd
    assert bench.step_flops(model, 5, 16, 8, torch.device("cpu"), count_batch=1) == full


def test_peak_table_and_cpu_has_no_mfu(monkeypatch):
    assert bench.peak_tflops(torch.device("cpu")) is None
    for name, peak in [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
                       ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA H100 NVL", None), ("NVIDIA L4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert bench.peak_tflops(torch.device("cuda")) == peak, name


def test_bench_row_runs_at_tiny_size_on_cpu():
    r = bench.bench_size("tiny", batch=4, tokens=4, channels=8, repeats=1, warmup=0, device=torch.device("cpu"),
                         ddt_width=128)
    assert r["ddt_width"] == 128 and r["mfu"] is None and r["gflop_per_step"] > 0
    assert r["euclid_ms"] > 0 and r["riemann_ms"] > 0 and r["ratio"] > 0
    line = bench.format_row(r)
    assert line.split()[11] == "—"  # the MFU column: no GPU, no peak


def test_a_plain_dit_narrower_than_its_tokens_is_benchmarked_not_refused():
    """Speed is measured on any shape (`lab bench --ddt-width 0` on S / 768 channels); RAE Thm 1's refusal
    guards training, which the bench does not do."""
    r = bench.bench_size("tiny", batch=2, tokens=4, channels=96, repeats=1, warmup=0, device=torch.device("cpu"),
                         ddt_width=None)
    assert r["ddt_width"] is None and r["euclid_ms"] > 0
