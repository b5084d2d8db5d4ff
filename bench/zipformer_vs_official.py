"""Our Zipformer against the official implementation, and against our own code before a change.

Two tables, every measurement a training step (forward + backward + SGD step) in a fresh process
at ``--threads`` threads, implementations interleaved round by round (the order alternates each
round) so that load from other jobs on this shared machine falls on all of them alike:

1. ``side by side`` (issue 14 item 4): encoder stacks only (front end excluded), input 4 x 500
   frames of 50 Hz embeddings (``dims[0]`` channels; lengths 500, 480, 450, 499), configs small,
   medium and base with the official configs (icefall ASR small/medium, k2SSL base), output
   downsampling 2 for both. Implementations: ``ours`` (this checkout), ``ours-before`` (our code
   at ``--before REV``, exported with ``git archive``; skipped without ``--before``) and
   ``official`` (the ``zipformer`` package, PyPI 0.1.3, run by ``--official-python``).
   Ours runs without its front end by replacing ``model.frontend`` with a pass-through (bench
   only). The official model runs in training mode with every ``batch_count`` set to
   ``--official-batch-count`` (default 100000, its steady state: final dropout, layer-skip and
   balancer probabilities; at 0 it would skip up to half of its layers). Its package imports
   torchaudio in a data module the encoder never uses; there is no CPU torchaudio here, so the
   official process gets an import-only stand-in ``torchaudio`` package (an empty
   ``__init__.py`` in a temporary directory) on ``PYTHONPATH``.
2. ``presets`` (issue 14 item 3): ``zipformer-tiny`` and ``zipformer-small`` with their fbank
   front end on 4 x 1000 frames (10 s), ours vs ours-before; training FLOP/s = 3 x forward FLOPs
   (``encoder_cost``, 2 x MACs) x batch / step time.

Per process: build, one warm-up step, ``--steps`` timed steps; the median wall and CPU time.

Needs the venv of the brief: ``python3 -m venv --system-site-packages /tmp/zipvenv`` and
``/tmp/zipvenv/bin/pip install --no-deps zipformer atdataset kaldialign kaldifst
simple-sentencepiece webdataset braceexpand``.

Run: ``python bench/zipformer_vs_official.py --before 98c520d``; results go to
bench/results/zipformer_vs_official.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT_TAG = "RESULT "
BENCH_LENGTHS = (500, 480, 450, 499)

# The official configs (same names as our presets zipformer-small / -medium / -base).
COMMON = dict(
    downsampling=(1, 2, 4, 8, 4, 2),
    num_heads=(4, 4, 4, 8, 4, 4),
    kernel_sizes=(31, 31, 15, 15, 15, 31),
    query_head_dim=32,
    value_head_dim=12,
    pos_head_dim=4,
    pos_dim=48,
)
CONFIGS = {
    "small": dict(
        num_layers=(2, 2, 2, 2, 2, 2),
        dims=(192, 256, 256, 256, 256, 256),
        feedforward_dims=(512, 768, 768, 768, 768, 768),
        unmasked_dims=(192, 192, 192, 192, 192, 192),
    ),
    "medium": dict(
        num_layers=(2, 2, 3, 4, 3, 2),
        dims=(192, 256, 384, 512, 384, 256),
        feedforward_dims=(512, 768, 1024, 1536, 1024, 768),
        unmasked_dims=(192, 192, 256, 256, 256, 192),
    ),
    "base": dict(
        num_layers=(2, 2, 3, 4, 3, 2),
        dims=(192, 256, 448, 768, 448, 192),
        feedforward_dims=(512, 768, 1024, 1536, 1024, 768),
        unmasked_dims=(192, 192, 256, 256, 256, 192),
    ),
}

# ---------------------------------------------------------------------------------------------
# child: one (implementation, config) in a fresh process; imports only torch and the model


def _time_steps(model, step, steps: int) -> dict:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def train_step():
        loss = step()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step()  # warm-up
    walls, cpus = [], []
    for _ in range(steps):
        c0, w0 = time.process_time(), time.perf_counter()
        train_step()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "walls": walls}


def _embeddings(dim: int):
    import torch

    torch.manual_seed(0)
    x = torch.randn(len(BENCH_LENGTHS), max(BENCH_LENGTHS), dim)
    return x, torch.tensor(BENCH_LENGTHS)


def child_ours(config: str, steps: int) -> dict:
    import torch

    from speechbudget.models.zipformer import build

    cfg = {k: v for k, v in {**COMMON, **CONFIGS[config]}.items() if k != "unmasked_dims"}
    torch.manual_seed(0)
    model = build(**cfg, output_downsampling=2).train()

    class PassThrough(torch.nn.Module):  # bench only: start at the stacks (front end excluded)
        def forward(self, x, lengths):
            return x, lengths

    model.frontend = PassThrough()
    model.input_dim = cfg["dims"][0]
    x, lengths = _embeddings(cfg["dims"][0])
    result = _time_steps(model, lambda: model(x, lengths).hidden.square().mean(), steps)
    result["params"] = sum(p.numel() for p in model.parameters())
    return result


def child_official(config: str, steps: int, batch_count: float) -> dict:
    import torch
    from zipformer.modules.zipformer import Zipformer
    from zipformer.utils import make_pad_mask

    cfg = {**COMMON, **CONFIGS[config]}
    torch.manual_seed(0)
    model = Zipformer(
        output_downsampling_factor=2,
        downsampling_factor=cfg["downsampling"],
        encoder_dim=cfg["dims"],
        num_encoder_layers=cfg["num_layers"],
        encoder_unmasked_dim=cfg["unmasked_dims"],
        query_head_dim=cfg["query_head_dim"],
        pos_head_dim=cfg["pos_head_dim"],
        value_head_dim=cfg["value_head_dim"],
        num_heads=cfg["num_heads"],
        feedforward_dim=cfg["feedforward_dims"],
        cnn_module_kernel=cfg["kernel_sizes"],
        pos_dim=cfg["pos_dim"],
    ).train()
    for module in model.modules():  # what its trainer does every batch
        if hasattr(module, "batch_count"):
            module.batch_count = batch_count
    x, lengths = _embeddings(cfg["dims"][0])
    x = x.transpose(0, 1)  # it is time-major: (T, B, D)
    mask = make_pad_mask(lengths)
    result = _time_steps(model, lambda: model(x, lengths, mask)[0].square().mean(), steps)
    result["params"] = sum(p.numel() for p in model.parameters())
    return result


def child_preset(preset: str, steps: int) -> dict:
    import torch

    from speechbudget.models.catalog import encoder_cost
    from speechbudget.models.presets import build_encoder

    torch.manual_seed(0)
    model = build_encoder(preset).train()
    x = torch.randn(4, 1000, 80)
    lengths = torch.tensor([1000, 960, 900, 998])
    result = _time_steps(model, lambda: model(x, lengths).hidden.square().mean(), steps)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["fwd_flops_per_10s_utt"] = 2 * encoder_cost(preset)["macs_per_audio_second"] * 10.0
    return result


def run_child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.impl == "official":
        result = child_official(args.config, args.steps, args.official_batch_count)
    elif args.config in CONFIGS:
        result = child_ours(args.config, args.steps)
    else:
        result = child_preset(args.config, args.steps)
    result["threads"] = torch.get_num_threads()
    result["torch"] = torch.__version__
    print(RESULT_TAG + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# parent


def export_revision(rev: str, dest: Path) -> Path:
    """``git archive`` of the package at ``rev`` into ``dest`` (a checkout-free copy of old code)."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "speechbudget"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def spawn(impl: str, config: str, args, paths: dict) -> dict:
    from common import loadavg

    python = args.official_python if impl == "official" else sys.executable
    env = dict(os.environ, PYTHONPATH=str(paths[impl]), OMP_NUM_THREADS=str(args.threads))
    cmd = [python, str(Path(__file__).resolve()), "--child", "--impl", impl, "--config", config]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
    cmd += ["--official-batch-count", str(args.official_batch_count)]
    load_before = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{impl} {config} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG) :])
    result.update(load_before=load_before, load_after=loadavg(), process_s=time.perf_counter() - t0)
    print(
        f"  {config:16s} {impl:12s} step {result['wall_s']:.2f} s wall, {result['cpu_s']:.2f} s cpu "
        f"(load {load_before[0]:.1f}->{result['load_after'][0]:.1f})",
        flush=True,
    )
    return result


def rounds(items: list, impls: list, args, paths: dict) -> dict:
    runs: dict = {item: {impl: [] for impl in impls} for item in items}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for item in items:
            order = impls if r % 2 == 0 else impls[::-1]
            for impl in order:
                runs[item][impl].append(spawn(impl, item, args, paths))
    return runs


def summarize(runs: dict, impls: list) -> dict:
    """Per item and implementation: median over rounds of the per-process median step time."""
    out = {}
    for item, per_impl in runs.items():
        out[item] = {}
        for impl in impls:
            rs = per_impl[impl]
            out[item][impl] = {
                "wall_s": statistics.median(r["wall_s"] for r in rs),
                "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                "params": rs[0]["params"],
                "loads": [[r["load_before"][0], r["load_after"][0]] for r in rs],
                **(
                    {"fwd_flops_per_10s_utt": rs[0]["fwd_flops_per_10s_utt"]}
                    if "fwd_flops_per_10s_utt" in rs[0]
                    else {}
                ),
            }
    return out


def markdown(data: dict) -> str:
    from common import machine_markdown, markdown_table

    a = data["args"]
    lines = [
        "### Zipformer: ours vs the official implementation, and ours before/after the speed-up",
        "",
        f"Command: `{data['command']}`",
        "",
        machine_markdown(data["machine"]),
        "",
        f"Training step = forward + backward + SGD step, {a['threads']} threads, fresh process per "
        f"(implementation, config), {a['rounds']} interleaved rounds (order alternating), per process "
        f"1 warm-up + {a['steps']} timed steps (median); table: median over rounds. Ratios > 1 mean "
        "ours is faster. The official package (zipformer 0.1.3, in a venv over our torch) runs in "
        f"training mode with batch_count {a['official_batch_count']} (steady-state schedules) and an "
        "import-only stand-in `torchaudio` package on PYTHONPATH (its data module imports torchaudio; "
        "the encoder never calls it).",
        "",
        "#### Encoder stacks only: 4 x 500 frames of 50 Hz embeddings, output downsampling 2",
        "",
    ]
    side = data["side_by_side"]
    impls = data["impls"]
    headers = ["config", "params ours (M)", "params official (M)"]
    headers += [f"{i} s (wall)" for i in impls] + [f"{i} cpu s" for i in impls]
    headers += ["official / ours (wall)", "official / ours (cpu)"]
    if "ours-before" in impls:
        headers += ["before / after (wall)"]
    headers += ["load 1m (per process)"]
    rows = []
    for config, per in side.items():
        row = [config, f"{per['ours']['params'] / 1e6:.3f}", f"{per['official']['params'] / 1e6:.3f}"]
        row += [f"{per[i]['wall_s']:.2f}" for i in impls] + [f"{per[i]['cpu_s']:.2f}" for i in impls]
        row += [
            f"{per['official']['wall_s'] / per['ours']['wall_s']:.2f}x",
            f"{per['official']['cpu_s'] / per['ours']['cpu_s']:.2f}x",
        ]
        if "ours-before" in impls:
            row += [f"{per['ours-before']['wall_s'] / per['ours']['wall_s']:.2f}x"]
        row += [" ".join(f"{b:.1f}->{e:.1f}" for i in impls for b, e in per[i]["loads"])]
        rows.append(row)
    lines += [markdown_table(headers, rows), ""]
    if data.get("presets"):
        lines += [
            "#### Presets with their fbank front end: 4 x 1000 frames (10 s), training FLOP/s",
            "",
            "Training FLOP/s = 3 x forward FLOPs (`encoder_cost`, 2 x MACs) x 4 / step time; by wall "
            "time and by the process's CPU time (which discounts waiting for a core).",
            "",
        ]
        headers = ["preset", "params M", "fwd GFLOP / 10 s utt"]
        headers += ["before s (wall)", "after s (wall)", "before GFLOP/s", "after GFLOP/s", "after / before"]
        headers += ["before GFLOP/s (cpu)", "after GFLOP/s (cpu)", "after / before (cpu)", "load 1m"]
        rows = []
        for preset, per in data["presets"].items():
            flops = 3 * per["ours"]["fwd_flops_per_10s_utt"] * 4
            b, n = per["ours-before"], per["ours"]
            rows.append(
                [
                    preset,
                    f"{n['params'] / 1e6:.2f}",
                    f"{per['ours']['fwd_flops_per_10s_utt'] / 1e9:.1f}",
                    f"{b['wall_s']:.2f}",
                    f"{n['wall_s']:.2f}",
                    f"{flops / b['wall_s'] / 1e9:.1f}",
                    f"{flops / n['wall_s'] / 1e9:.1f}",
                    f"{b['wall_s'] / n['wall_s']:.2f}x",
                    f"{flops / b['cpu_s'] / 1e9:.1f}",
                    f"{flops / n['cpu_s'] / 1e9:.1f}",
                    f"{b['cpu_s'] / n['cpu_s']:.2f}x",
                    " ".join(
                        f"{x:.1f}->{y:.1f}" for i in ("ours-before", "ours") for x, y in per[i]["loads"]
                    ),
                ]
            )
        lines += [markdown_table(headers, rows), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--presets", nargs="*", default=["zipformer-tiny", "zipformer-small"])
    p.add_argument("--before", default=None, help="git revision of our code to compare with")
    p.add_argument("--official-python", default="/tmp/zipvenv/bin/python")
    p.add_argument("--official-batch-count", type=float, default=100000.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--config", default="small", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args)
        return

    import torch
    from common import default_out, machine_info, save_results

    torch.set_num_threads(args.threads)
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "stub"
        (stub / "torchaudio").mkdir(parents=True)
        (stub / "torchaudio" / "__init__.py").write_text('"""Import-only stand-in (bench)."""\n')
        paths = {"ours": repo, "official": stub}
        impls = ["ours", "official"]
        if args.before:
            paths["ours-before"] = export_revision(args.before, Path(tmp))
            impls.insert(1, "ours-before")
        info = machine_info()
        side = rounds(args.configs, impls, args, paths)
        presets = rounds(args.presets, ["ours", "ours-before"], args, paths) if args.before else {}
    data = {
        "command": "python bench/zipformer_vs_official.py " + " ".join(sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "child", "impl", "config")},
        "machine": info,
        "impls": impls,
        "side_by_side": summarize(side, impls),
        "presets": summarize(presets, ["ours", "ours-before"]) if presets else {},
        "runs": {"side_by_side": side, "presets": presets},
    }
    out = args.out or default_out("zipformer_vs_official")
    md = save_results(out, data, markdown(data))
    print(md.read_text())


if __name__ == "__main__":
    main()
