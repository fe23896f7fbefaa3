"""Torch engine throughput vs HF transformers generate() on the same model, dtype and machine.

    HF_HUB_OFFLINE=1 python bench/engine_throughput.py [--dtype auto|float32|bfloat16]
    python bench/engine_throughput.py --device cuda --random-weights   # a GPU box without the model

Prints prefill tokens/s (512-token prompt), decode tokens/s at batch 1/8/32,
the batch-32 ceiling (a step that did nothing but its weight matmuls), TTFT
of a 2,000-token prompt cold vs with 90% of it in the prefix cache, and
the ratios to HF (run afterwards in a subprocess, so the two never share a
process). Every figure is the best of --repeat runs: on a shared box the
median mostly measures the neighbours. `--random-weights` writes a Llama
checkpoint with SmolLM2-135M-Instruct's shapes and random weights and runs
both sides on it: the same work per token, for machines without the model
package.
A benchmark, never a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from tandem.worker.engine import EngineRequest, SamplingConfig
from tandem.worker.kv_event_sink import RecordingSink
from tandem.worker.torch_engine import TorchEngine, TorchEngineConfig
from tandem.worker.torch_engine.config import DEFAULT_GGUF_FILE, default_model_path
from tandem.worker.torch_engine.model import LlamaModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DECODE_BATCHES = (1, 8, 32)
_seeds = iter(range(1000, 10**9))


def prompt(n: int) -> list[int]:
    g = torch.Generator().manual_seed(next(_seeds))
    return torch.randint(100, 49000, (n,), generator=g).tolist()


class Ours:
    """The torch engine through its public async API (thread hop and queues included)."""

    def __init__(self, engine: TorchEngine) -> None:
        self.engine = engine

    async def _times(self, ids: list[int], max_tokens: int) -> list[float]:
        """Arrival time of every token of one request."""
        times: list[float] = []
        sampling = SamplingConfig(max_tokens=max_tokens, ignore_eos=True)
        async for out in self.engine.generate(EngineRequest("bench", ids, sampling)):
            times.extend(time.perf_counter() for _ in out.token_ids)
        return times

    async def ttft(self, ids: list[int]) -> float:
        start = time.perf_counter()
        await self._times(ids, 1)
        return time.perf_counter() - start

    async def decode_rate(self, batch: int, new: int) -> float:
        runs = await asyncio.gather(*(self._times(prompt(32), new) for _ in range(batch)))
        first = max(t[0] for t in runs)  # every sequence is past its prefill
        last = max(t[-1] for t in runs)
        return batch * (new - 1) / (last - first)


class HF:
    """HF transformers generate() on the same GGUF, dequantized by transformers itself."""

    def __init__(self, dtype: torch.dtype, model_path: str, device: str) -> None:
        from transformers import AutoModelForCausalLM

        if os.path.isdir(model_path):
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        else:
            path = model_path or default_model_path()
            model = AutoModelForCausalLM.from_pretrained(
                os.path.dirname(path), gguf_file=os.path.basename(path) or DEFAULT_GGUF_FILE,
                dtype=dtype,
            )  # fmt: skip
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def run(self, batch: int, n_prompt: int, new: int) -> float:
        ids = torch.tensor([prompt(n_prompt) for _ in range(batch)], device=self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                do_sample=False, pad_token_id=2,
            )  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def write_random_checkpoint(directory: str) -> str:
    """A Llama checkpoint with SmolLM2-135M-Instruct's shapes and random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def matmul_ceiling(model: LlamaModel, batch: int, steps: int = 20) -> float:
    """Decode tok/s at `batch` if a step did nothing but its weight matmuls.

    The same (pre-packed) matmuls a decode step runs, on random activations:
    every weight is read once per step, so this is the ceiling that memory
    bandwidth puts on decode throughput, whatever the rest of the step costs.
    """
    c, linear, device = model.config, model.linear, model.device

    def rand(width: int) -> torch.Tensor:
        return torch.randn(batch, width, dtype=model.dtype, device=device)

    x, attn, inner = rand(c.hidden_size), rand(c.q_size), rand(c.intermediate_size)

    def step() -> None:
        for layer in model.layers:
            linear(x, layer["qkv"])
            linear.add(x, attn, layer["o"])
            linear(x, layer["gate_up"])
            linear.add(x, inner, layer["down"])
        linear(x, model.lm_head)
        if device.type == "cuda":
            torch.cuda.synchronize()

    best = float("inf")
    with torch.inference_mode():
        step()
        for _ in range(steps):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
    return batch / best


async def bench_ours(args: argparse.Namespace) -> tuple[dict[str, float], str]:
    config = TorchEngineConfig(
        model_path=args.model_path, dtype=args.dtype, device=args.device, num_kv_blocks=4096
    )
    engine = TorchEngine(config, RecordingSink())
    await engine.start()
    ours = Ours(engine)
    runs: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        runs.setdefault(key, []).append(value)

    await ours.decode_rate(4, 8)  # warm up
    for _ in range(args.repeat):
        note("prefill", 512 / await ours.ttft(prompt(512)))
        for batch in DECODE_BATCHES:
            note(f"decode{batch}", await ours.decode_rate(batch, args.decode_tokens))
        base = prompt(2000)
        note("ttft_cold", await ours.ttft(base))
        note("ttft_hit", await ours.ttft(base[:1800] + prompt(200)))  # 90% cached now
    dtype = str(engine.model.dtype).removeprefix("torch.")
    await engine.stop()
    # After stop: the engine thread's OpenMP team is gone and cannot contend with this one.
    note("ceiling32", matmul_ceiling(engine.model, 32))
    return {k: (min(v) if k.startswith("ttft") else max(v)) for k, v in runs.items()}, dtype


def bench_hf(args: argparse.Namespace) -> dict[str, float]:
    hf = HF(torch.bfloat16 if args.dtype == "bfloat16" else torch.float32, args.model_path,
            args.device)  # fmt: skip
    hf.run(2, 32, 4)  # warm up
    res = {"prefill": 512 / min(hf.run(1, 512, 1) for _ in range(args.repeat))}
    for batch in DECODE_BATCHES:
        t1 = min(hf.run(batch, 32, 1) for _ in range(args.repeat))
        tn = min(hf.run(batch, 32, args.decode_tokens) for _ in range(args.repeat))
        res[f"decode{batch}"] = batch * (args.decode_tokens - 1) / (tn - t1)
    res["ttft_cold"] = min(hf.run(1, 2000, 1) for _ in range(args.repeat))
    return res


def hf_in_subprocess(args: argparse.Namespace, dtype: str) -> dict[str, float]:
    """HF in its own process: two OpenMP teams in one process slow each other down."""
    cmd = [sys.executable, __file__, "--hf-only", "--dtype", dtype, "--repeat", str(args.repeat)]
    cmd += ["--decode-tokens", str(args.decode_tokens), "--device", args.device]
    cmd += ["--model-path", args.model_path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-hf", action="store_true", help="skip the HF transformers baseline")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--model-path", default="", help="GGUF file or HF safetensors directory (default: bundled)"
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="SmolLM2-135M-shaped random weights (a machine without the model package)",
    )
    parser.add_argument("--hf-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_only:
        print(json.dumps(bench_hf(args)))
        return
    if args.random_weights:
        args.model_path = write_random_checkpoint(tempfile.mkdtemp(prefix="random-smollm2-"))
    ours, dtype = asyncio.run(bench_ours(args))
    hf = {} if args.no_hf else hf_in_subprocess(args, dtype)

    print(
        f"\ntorch engine vs HF transformers generate(): {dtype}, {device_name(args.device)}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, best of {args.repeat}"
        + (", random weights" if args.random_weights else "")
    )
    print(f"{'metric':<36}{'tandem':>10}{'HF':>10}{'tandem/HF':>11}")
    rows = [("prefill tok/s (512-token prompt)", "prefill")]
    rows += [(f"decode tok/s, batch {b}", f"decode{b}") for b in DECODE_BATCHES]
    rows += [("decode tok/s, batch 32, matmuls only", "ceiling32")]
    rows += [("TTFT s, 2000 tokens, cold", "ttft_cold")]
    for label, key in rows:
        is_time = key.startswith("ttft")
        fmt = "{:.3f}" if is_time else "{:.1f}"
        ref = hf.get("decode32" if key == "ceiling32" else key)
        speedup = "" if ref is None else f"{(ref / ours[key] if is_time else ours[key] / ref):.2f}x"
        ref_s = "" if ref is None else fmt.format(ref)
        print(f"{label:<36}{fmt.format(ours[key]):>10}{ref_s:>10}{speedup:>11}")
    print(f"{'TTFT s, 2000 tokens, 90% cached':<36}{ours['ttft_hit']:>10.3f}")
    print(
        f"cache-hit TTFT is {ours['ttft_cold'] / ours['ttft_hit']:.1f}x faster than cold "
        "(tandem/HF: speed-up of tandem; for TTFT, HF time / tandem time)"
    )


if __name__ == "__main__":
    main()
