"""Benchmark: Count-ception's training step and inference with FFT against direct convolutions.

Both run the same model (same weights) on one 256x256 image (a 320x320 padded input), side by
side in one process: a training step is forward, L1 loss, backward and an Adam step, in
training mode with the recipe's frozen BatchNorm; inference is a forward pass in evaluation
mode. Timings are medians over
``--repeats`` alternating rounds after a warm-up. The ``countception-speed`` section of
RESULTS.md; the timings are kept in ``benchmarks/countception_speed/records.json``.

    python benchmarks/countception_speed.py            # measure, then write the section
    python benchmarks/countception_speed.py --report   # the section from the records
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from celltally import create_model
from celltally.targets import WINDOW
from results import read_records, save_records, write_section

SIDE = 256
MODES = {  # name: (FFT convolutions, bfloat16 autocast)
    "direct, float32": (False, False),
    "direct, bfloat16 autocast": (False, True),
    "FFT, float32": (True, False),
    "FFT, bfloat16 autocast": (True, True),
}


def train_step(model, optimizer, image, target, bf16: bool) -> float:
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        output = model(image)
    loss = torch.nn.functional.l1_loss(output.float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


@torch.no_grad()
def inference(model, image, bf16: bool) -> float:
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(image)
    return time.perf_counter() - started


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX); elsewhere autocast
    emulates it, minutes per step, and the bfloat16 rows would measure the emulation."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def measure(repeats: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    model = create_model("countception", frozen_bn=True)  # the training recipe's BatchNorm
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)  # tiny: weights barely move
    image = torch.randn(1, 1, SIDE + 2 * WINDOW, SIDE + 2 * WINDOW)
    image = image.contiguous(memory_format=torch.channels_last)
    target = torch.rand(1, 1, SIDE + WINDOW, SIDE + WINDOW)
    modes = {m: flags for m, flags in MODES.items() if native_bfloat16() or not flags[1]}
    times: dict[str, dict[str, list[float]]] = {m: {"train": [], "infer": []} for m in modes}
    for round_ in range(repeats + 1):  # round 0 warms up
        for mode, (fast, bf16) in modes.items():
            model.use_fft(fast).train()
            step = train_step(model, optimizer, image, target, bf16)
            model.eval()
            forward = inference(model, image, bf16)
            if round_:
                times[mode]["train"].append(step)
                times[mode]["infer"].append(forward)
    return {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}


@torch.no_grad()
def agreement() -> float:
    """Largest |FFT - direct| output difference of the evaluation-mode model, relative to the
    largest output."""
    torch.manual_seed(1)
    model = create_model("countception").eval()
    image = torch.randn(1, 1, SIDE + 2 * WINDOW, SIDE + 2 * WINDOW)
    fast, direct = model.use_fft(True)(image), model.use_fft(False)(image)
    return float((fast - direct).abs().max() / direct.abs().max())


def report(
    times: dict[str, dict[str, float]], error: float, repeats: int, threads: int, cpu: str
) -> str:
    base = times["direct, float32"]
    rows = [
        f"| {mode} | {t['train']:.2f} | {base['train'] / t['train']:.1f}x"
        f" | {t['infer']:.2f} | {base['infer'] / t['infer']:.1f}x |"
        for mode, t in times.items()
    ]
    return "\n".join(
        [
            "### Count-ception: FFT against direct convolutions",
            "",
            "Command: `python benchmarks/countception_speed.py`",
            "",
            f"One {SIDE}x{SIDE} image, batch of 1, {threads} threads of {cpu}; medians of"
            f" {repeats} alternating rounds in one run. Training step = forward, L1 loss, backward,"
            " Adam step, with the recipe's frozen BatchNorm. The FFT replaces the 14x14 and 18x18"
            " convolutions only; with bfloat16 autocast the other convolutions (and, direct, the"
            " large ones) run in bfloat16, the FFTs in float32; the bfloat16 rows are measured"
            " only on a CPU with native bfloat16 (elsewhere autocast emulates it, far slower)."
            " Speed-ups are against direct float32.",
            "",
            "| convolutions | training step (s) | speed-up | inference (s) | speed-up |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Largest output difference FFT - direct: {error:.1e} of the largest output"
            " (evaluation mode, float32). Forward and backward agreement per layer is a test"
            " (`tests/test_countception.py`).",
        ]
    )


def cpu_name() -> str:
    """The CPU's model name and vector capability, e.g. 'AMD EPYC 7B13 (AVX2)'."""
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model or 'an unnamed CPU'} ({torch.backends.cpu.get_cpu_capability()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="only rewrite from the records")
    args = parser.parse_args()
    if not args.report:
        record = {"times": measure(args.repeats), "error": agreement(), "repeats": args.repeats}
        machine = {"threads": torch.get_num_threads(), "cpu": cpu_name()}
        save_records("countception_speed", {**record, **machine})
    text = report(**read_records("countception_speed"))
    print(text)
    write_section("countception-speed", text)


if __name__ == "__main__":
    main()
