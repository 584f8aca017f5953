"""Whole-forward consequences of pricing each kernel from its structure (the committed H100 table)."""

from nfpsim.config import load_hardware, load_kernels, load_model
from nfpsim.latency import make_latency_model
from nfpsim.nfp import analyze
from nfpsim.shapes import ForwardShape

H100 = load_hardware("h100_sxm")
LLAMA = load_model("llama3_8b")


def test_serving_batch_attention_costs_about_reading_the_kv_cache():
    """Batch 256 x context 640: decode attention is bound by the KV read, not by padded query tiles."""
    report = analyze(make_latency_model("auto", H100, load_kernels("vendor")), LLAMA, batch=256, context=640,
                     eps=0.1, positions=[1, 2])
    kv_read_s = 256 * (640 + 1) * LLAMA.kv_bytes_per_token / H100.stream_bytes_per_s
    attention_s = report.modules["attention"].latency_s[0]
    assert kv_read_s <= attention_s <= 2 * kv_read_s


def test_a_prefill_with_nfpsims_triton_kernels_is_close_to_the_vendor_path():
    """The Triton host picks 128-row tiles for 512 tokens instead of re-streaming weights every 16."""
    shape = ForwardShape.uniform(1, 512, 0)
    vendor = make_latency_model("auto", H100, load_kernels("vendor")).forward_time(LLAMA, shape)
    triton = make_latency_model("auto", H100, load_kernels("triton")).forward_time(LLAMA, shape)
    assert triton <= 1.5 * vendor


def test_h200_borrows_the_h100_constants_and_says_so():
    model = make_latency_model("auto", load_hardware("h200"), load_kernels("vendor"))
    assert model.kind == "transferred" and "h100_sxm" in model.origin
    report = analyze(model, LLAMA, batch=1, context=4096, eps=0.1, positions=[1, 2, 4])
    assert "h100_sxm" in report.to_dict()["latency_origin"]
