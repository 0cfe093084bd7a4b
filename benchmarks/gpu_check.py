"""Every CUDA figure docs/benchmarks.md leaves open, in one run of under 8 minutes on one H200, as one JSON file.

    bash benchmarks/gpu_check.sh                      # on a CUDA machine: the full check (exit 2 without CUDA)
    bash benchmarks/gpu_check.sh --smoke              # anywhere: every item at tiny sizes (CPU: ~2 minutes)
    python benchmarks/gpu_check.py --items vit_b16_eager,score --out /tmp/part.json

Items (each runs in its own process under its own time limit, so a slow or crashing item cannot take the
others or the budget with it; a failure is recorded with its one-line error and the next item runs):

* env: GPU, memory, torch/CUDA versions, CPU cores, date; the bf16 matrix-product rate of this GPU.
* loaders: whether the training loader (``runtime.make_loader``/``batches``) and the scoring loader
  (``Predictor.loader``/``_score_batch``) pin memory for a CUDA device and copy with ``non_blocking``.
* vit_{b16,s16}_{eager,compile}: ViT-B/16 and ViT-S/16 at 224 px under bf16 autocast, training step
  (forward + backward + AdamW) and inference images/s, MFU (bench_vit's FLOP count, training = 3x forward)
  against the GPU's bf16 peak; compiled: ``torch.compile`` time reported apart, excluded from the rates.
* mae_b16: one MAE pretraining step (``medvit.MaskedAutoencoder`` around ViT-B/16, the pipeline's decoder).
* demo_train: what ``make demo`` trains (configs/demo_xray.yaml, its plan, ``train.amp: auto``) on a
  synthetic cohort: images/s of the Trainer's epochs and of model-only steps, and the dtype ``auto`` picked.
* score: ``medvit score`` (``run_score``) end-to-end vs decode-only vs model-only, bench_score's split, bf16.

The JSON goes to ``--out`` (default gpu_check.json; a relative path lands under ``$OUT`` when that is set),
the items' logs to the same name with ``.log``. Item settings: ``FULL`` and ``SMOKE`` below.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = "medvit.gpu_check/1"
EXIT_USAGE = 2  # no CUDA without --smoke, or an unknown item
MIN_ITEM_S = 20  # an item is skipped when less than this is left of the budget
LOG_TAIL_CHARS = 60_000  # per item, in the combined log


# ---- settings ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """Sizes of one mode. ``presets`` maps the full-size preset of an item to the one this mode builds."""

    budget_s: int
    img: int
    vit_batch: dict[str, int]
    depth: int | None  # None: the preset's
    presets: dict[str, str]
    warmup: int
    iters: int
    rounds: int
    mae_batch: int
    matmul_n: int
    demo_studies: int | None  # None: what `medvit demo` writes
    timed_epochs: int
    score_studies: int
    score_batch: int
    score_repeats: int
    score_config: str
    score_overrides: tuple[str, ...] = ()
    limits: dict[str, int] = field(default_factory=dict)


FULL = Sizes(
    budget_s=420, img=224, vit_batch={"vit_base": 128, "vit_small": 256}, depth=None,
    presets={"vit_base": "vit_base", "vit_small": "vit_small"}, warmup=3, iters=20, rounds=3, mae_batch=128,
    matmul_n=8192, demo_studies=None, timed_epochs=3, score_studies=600, score_batch=64, score_repeats=3,
    score_config="configs/xray_vit_s16.yaml",
    limits={"env": 45, "loaders": 60, "vit_b16_eager": 75, "vit_s16_eager": 60, "mae_b16": 60, "demo_train": 120,
            "score": 120, "vit_b16_compile": 150, "vit_s16_compile": 120},
)
SMOKE = Sizes(
    budget_s=175, img=32, vit_batch={"vit_tiny": 2}, depth=1, presets={"vit_base": "vit_tiny", "vit_small": "vit_tiny"},
    warmup=1, iters=1, rounds=1, mae_batch=2, matmul_n=256, demo_studies=12, timed_epochs=1, score_studies=12,
    score_batch=2, score_repeats=1, score_config="configs/xray_vit_s16.yaml",
    score_overrides=("model.preset=vit_tiny", "model.depth=1", "preprocess.xray.img_size=32"),
    limits={"env": 30, "loaders": 40, "vit_b16_eager": 30, "vit_s16_eager": 30, "mae_b16": 30, "demo_train": 60,
            "score": 60, "vit_b16_compile": 100, "vit_s16_compile": 60},  # a cold inductor cache on 2 cores: ~60 s
)


# ---- what an item records ------------------------------------------------------------------------------
class Skip(Exception):
    """An item that cannot run here (its reason is one line)."""


def one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def error_line(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")


@dataclass
class Record:
    """One item's result, saved after every figure so that a timed-out item keeps what it measured."""

    path: Path
    status: str = "running"
    reason: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    headline: str = ""

    def figure(self, name: str, value: float | int | None, unit: str) -> None:
        number = value if value is None or isinstance(value, int) else round(float(value), 4)
        self.figures[name] = {"value": number, "unit": unit}
        self.save()

    def note(self, **info: Any) -> None:
        self.info.update(info)
        self.save()

    def as_dict(self) -> dict[str, Any]:
        out = {"status": self.status, "settings": self.settings, "figures": self.figures, "info": self.info,
               "headline": self.headline}
        if self.reason is not None:
            out["reason" if self.status == "skipped" else "error"] = self.reason
        return out

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1, default=str))
        os.replace(tmp, self.path)


@dataclass
class Ctx:
    """What every item gets: its device, sizes, scratch folder and record."""

    device: Any  # torch.device
    sizes: Sizes
    work: Path
    rec: Record

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ---- timing and FLOPs ------------------------------------------------------------------------------------
def first_call_s(step: Callable[[], None], ctx: Ctx) -> float:
    """Wall time of one call (a compiled step's first call: the compile and one step)."""
    start = time.perf_counter()
    step()
    ctx.sync()
    return time.perf_counter() - start


def images_per_s(step: Callable[[], None], batch: int, ctx: Ctx) -> tuple[float, list[float]]:
    """Median images/s over ``rounds`` rounds of ``iters`` calls, after ``warmup`` calls."""
    s = ctx.sizes
    for _ in range(s.warmup):
        step()
    ctx.sync()
    rates = []
    for _ in range(s.rounds):
        start = time.perf_counter()
        for _ in range(s.iters):
            step()
        ctx.sync()
        rates.append(batch * s.iters / (time.perf_counter() - start))
    return statistics.median(rates), [round(r, 1) for r in rates]


def bench_module(name: str) -> Any:
    """A module of benchmarks/ (bench_vit, bench_train, bench_score), imported as it stands."""
    folder = str(ROOT / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def bf16_peak_tflops(ctx: Ctx) -> tuple[float | None, str]:
    """The GPU's dense bf16 peak from bench_vit's table, and the GPU's name."""
    import torch

    if ctx.device.type != "cuda":
        return None, "cpu"
    name = torch.cuda.get_device_name(ctx.device)
    peaks = bench_module("bench_vit").BF16_PEAK_TFLOPS
    return next((v for k, v in peaks.items() if k in name), None), name


def reset_peak_memory(ctx: Ctx) -> None:
    import torch

    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)


def record_peak_memory(ctx: Ctx, name: str = "peak_memory") -> None:
    import torch

    if ctx.device.type == "cuda":
        ctx.rec.figure(name, torch.cuda.max_memory_allocated(ctx.device) / 2**30, "GiB")


def autocast(ctx: Ctx) -> contextlib.AbstractContextManager:
    import torch

    return torch.autocast(ctx.device.type, dtype=torch.bfloat16)


# ---- items: environment ----------------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return None


def nvidia_smi() -> str | None:
    """Driver, clocks and power limit as nvidia-smi reports them (None without it)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=15)
        return one_line(done.stdout) or one_line(done.stderr)
    return None


def matmul_tflops(ctx: Ctx) -> float:
    """bf16 matrix-product rate (n x n x n, mean of 10 after 3 warm-ups): the ceiling MFU can be read against."""
    import torch

    n = ctx.sizes.matmul_n
    a = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    ctx.sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    ctx.sync()
    return 10 * 2 * n**3 / (time.perf_counter() - start) / 1e12


def measure_env(ctx: Ctx) -> None:
    import torch

    rec = ctx.rec
    rec.note(date_utc=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), python=platform.python_version(),
             platform=platform.platform(), cpu=cpu_model(), torch=torch.__version__, torch_cuda=torch.version.cuda,
             cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             device=str(ctx.device), torch_threads=torch.get_num_threads(),
             omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    rec.figure("cpu_cores", os.cpu_count(), "cores")
    with contextlib.suppress(AttributeError):
        rec.figure("cpu_cores_usable", len(os.sched_getaffinity(0)), "cores")
    rec.figure("host_memory", memory_gib(), "GiB")
    gpu = "no GPU"
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        gpu = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
        rec.note(gpu=props.name, compute_capability=f"{props.major}.{props.minor}", nvidia_smi=nvidia_smi(),
                 bf16_supported=torch.cuda.is_bf16_supported())
        rec.figure("gpu_memory", props.total_memory / 2**30, "GiB")
        rec.figure("gpu_multiprocessors", props.multi_processor_count, "SMs")
        peak, _ = bf16_peak_tflops(ctx)
        rec.figure("bf16_peak_datasheet", peak, "TFLOP/s")
    rate = matmul_tflops(ctx)
    rec.settings.update(matmul_n=ctx.sizes.matmul_n, matmul_dtype="bfloat16")
    rec.figure("bf16_matmul", rate, "TFLOP/s")
    rec.headline = (f"{gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}; {os.cpu_count()} cores; "
                    f"bf16 matmul {rate:.1f} TFLOP/s")


# ---- items: pin_memory and non_blocking ------------------------------------------------------------------
def function_node(tree: ast.Module, qualname: str) -> ast.FunctionDef:
    """The definition of ``name`` or ``Class.name`` in a parsed module."""
    node: Any = tree
    for part in qualname.split("."):
        node = next((n for n in node.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == part), None)
        if node is None:
            raise Skip(f"{qualname} not found")
    return node


def copy_and_pin_lines(path: Path, qualname: str) -> list[dict[str, Any]]:
    """Each ``.to(...)`` call of a function (with its ``non_blocking``) and each ``pin_memory=`` it passes."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(function_node(ast.parse(source), qualname)):
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        where = {"file": str(path.relative_to(ROOT)), "function": qualname, "line": node.lineno,
                 "code": lines[node.lineno - 1].strip()}
        if isinstance(node.func, ast.Attribute) and node.func.attr == "to":
            flag = keywords.get("non_blocking")
            found.append({**where, "call": ".to", "non_blocking": isinstance(flag, ast.Constant) and flag.value is True})
        if "pin_memory" in keywords:
            found.append({**where, "call": "pin_memory=", "expression": ast.unparse(keywords["pin_memory"])})
    return found


def loader_pin_flags(ctx: Ctx) -> dict[str, bool]:
    """``pin_memory`` of the training and the scoring loader as built for a CUDA device (nothing is copied)."""
    import torch

    from pipelines import runtime
    from pipelines.config import load_config
    from pipelines.scoring.predictor import Predictor

    cuda = torch.device("cuda", 0)
    data = torch.utils.data.TensorDataset(torch.zeros(2, 1))
    train = runtime.make_loader(data, batch_size=1, num_workers=0, shuffle=False, seed=0, epoch=0,
                                info=runtime.Dist(), device=cuda)
    config = load_config(ROOT / "configs" / "demo_xray.yaml", [f"output.dir={ctx.work}"])
    predictor = Predictor(torch.nn.Identity(), config, device=cuda, amp="off")  # no parameters: nothing moves
    return {"make_loader_pin_memory_cuda": bool(train.pin_memory),
            "predictor_loader_pin_memory_cuda": bool(predictor.loader([]).pin_memory)}


def check_loaders(ctx: Ctx) -> None:
    rec = ctx.rec
    runtime_py, predictor_py = ROOT / "pipelines" / "runtime.py", ROOT / "pipelines" / "scoring" / "predictor.py"
    found = {"make_loader": copy_and_pin_lines(runtime_py, "make_loader"),
             "batches": copy_and_pin_lines(runtime_py, "batches"),
             "Predictor.loader": copy_and_pin_lines(predictor_py, "Predictor.loader"),
             "Predictor._score_batch": copy_and_pin_lines(predictor_py, "Predictor._score_batch")}
    rec.note(lines=[line for lines in found.values() for line in lines])
    copies = {name: [c for c in lines if c["call"] == ".to"] for name, lines in found.items()}
    rec.note(batches_non_blocking=bool(copies["batches"]) and all(c["non_blocking"] for c in copies["batches"]),
             score_batch_non_blocking=bool(copies["Predictor._score_batch"])
             and all(c["non_blocking"] for c in copies["Predictor._score_batch"]))
    try:
        rec.note(**loader_pin_flags(ctx))
    except ModuleNotFoundError as exc:  # the source lines above still answer
        rec.note(runtime_check=f"skipped: needs module '{exc.name}'")
    problems = [f"{c['file']}:{c['line']} {c['code']}" for lines in copies.values() for c in lines if not c["non_blocking"]]
    problems += [f"{k} is off for CUDA" for k in ("make_loader_pin_memory_cuda", "predictor_loader_pin_memory_cuda")
                 if rec.info.get(k) is False]
    pins = [c for lines in found.values() for c in lines if c["call"] == "pin_memory="]
    problems += [f"{name}: no pin_memory= argument" for name in ("make_loader", "Predictor.loader")
                 if not any(c["function"] == name for c in pins)]
    rec.note(problems=problems)
    rec.headline = ("pin_memory on for CUDA in both loaders, every copy non_blocking" if not problems
                    else f"{len(problems)} problem(s): " + "; ".join(problems))
    if "runtime_check" in rec.info:
        rec.headline += f" (from the source only; runtime check {rec.info['runtime_check']})"


# ---- items: ViT training and inference -------------------------------------------------------------------
def vit_model(ctx: Ctx, preset: str, **overrides: Any) -> Any:
    """The mode's model for a full-size preset, on the device, seeded."""
    import torch

    import medvit

    torch.manual_seed(0)
    s = ctx.sizes
    depth = {"depth": s.depth} if s.depth else {}
    model = medvit.create_model(s.presets[preset], img_size=s.img, in_chans=1, **depth, **overrides)
    return model.to(ctx.device)


def vit_steps(model: Any, forward: Any, ctx: Ctx, batch: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(train step, inference step) on a fixed random batch under bf16 autocast."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(batch, 1, ctx.sizes.img, ctx.sizes.img, device=ctx.device)
    y = torch.randint(0, 2, (batch,), device=ctx.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        model.train()
        with autocast(ctx):
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        model.eval()
        with torch.no_grad(), autocast(ctx):
            forward(x)

    return train_step, infer_step


def record_rate(ctx: Ctx, phase: str, rate: float, rounds: list[float], tflops: float) -> str:
    """images/s, achieved TFLOP/s and MFU of one phase; its part of the headline."""
    peak, _ = bf16_peak_tflops(ctx)
    rec = ctx.rec
    rec.figure(f"{phase}_images_per_s", rate, "images/s")
    rec.figure(f"{phase}_tflops", tflops, "TFLOP/s")
    mfu = 100 * tflops / peak if peak else None
    rec.figure(f"{phase}_mfu", mfu, "% of bf16 peak")
    rec.note(**{f"{phase}_rounds_images_per_s": rounds})
    return f"{phase} {rate:.0f} img/s" + (f" (MFU {mfu:.1f}%)" if mfu is not None else "")


def measure_vit(preset: str, compiled: bool, ctx: Ctx) -> None:
    import torch

    rec, s = ctx.rec, ctx.sizes
    model = vit_model(ctx, preset, num_classes=2)
    batch = s.vit_batch[s.presets[preset]]
    flops = bench_module("bench_vit").vit_flops_per_image(model)
    peak, gpu = bf16_peak_tflops(ctx)
    rec.settings.update(preset=s.presets[preset], img_size=s.img, in_chans=1, num_classes=2, depth=len(model.blocks),
                        batch=batch, amp="bf16 autocast", optimizer="AdamW", compiled=compiled,
                        warmup=s.warmup, iters=s.iters, rounds=s.rounds, statistic="median of rounds",
                        flops="bench_vit.vit_flops_per_image; train = 3x forward", bf16_peak_tflops=peak, gpu=gpu)
    rec.figure("forward_gflop_per_image", flops / 1e9, "GFLOP")
    forward = torch.compile(model) if compiled else model
    train_step, infer_step = vit_steps(model, forward, ctx, batch)
    parts = []
    for phase, step, mult in (("train", train_step, 3), ("infer", infer_step, 1)):
        reset_peak_memory(ctx)
        if compiled:
            rec.figure(f"compile_{phase}_s", first_call_s(step, ctx), "s")
        rate, rounds = images_per_s(step, batch, ctx)
        parts.append(record_rate(ctx, phase, rate, rounds, rate * flops * mult / 1e12))
        record_peak_memory(ctx, f"{phase}_peak_memory")
    if compiled:
        parts.append(f"compile {rec.figures['compile_train_s']['value']:.0f}+{rec.figures['compile_infer_s']['value']:.0f} s")
    rec.headline = ", ".join(parts)


# ---- items: MAE ------------------------------------------------------------------------------------------
MAE_DECODER = {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4, "mask_ratio": 0.75,
               "norm_pix_loss": False}  # the pipeline's pretrain defaults (pipelines/config.py PretrainConfig)


def measure_mae(ctx: Ctx) -> None:
    import torch

    import medvit

    rec, s = ctx.rec, ctx.sizes
    encoder = vit_model(ctx, "vit_base", num_classes=0)
    mae = medvit.MaskedAutoencoder(encoder, **MAE_DECODER).to(ctx.device)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    x = torch.randn(s.mae_batch, 1, s.img, s.img, device=ctx.device)
    rec.settings.update(encoder=s.presets["vit_base"], img_size=s.img, depth=len(encoder.blocks), batch=s.mae_batch,
                        amp="bf16 autocast", optimizer="AdamW betas (0.9, 0.95)", warmup=s.warmup, iters=s.iters,
                        rounds=s.rounds, **MAE_DECODER)

    def step() -> None:
        mae.train()
        with autocast(ctx):
            loss = mae(x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    reset_peak_memory(ctx)
    rate, rounds = images_per_s(step, s.mae_batch, ctx)
    rec.figure("train_images_per_s", rate, "images/s")
    rec.figure("step_ms", 1000 * s.mae_batch / rate, "ms")
    rec.note(rounds_images_per_s=rounds, visible_patches=medvit.mae.num_visible(encoder.num_patches, 0.75),
             patches=encoder.num_patches)
    record_peak_memory(ctx)
    rec.headline = f"{rate:.0f} img/s ({1000 * s.mae_batch / rate:.1f} ms/step, batch {s.mae_batch})"


# ---- items: the demo training --------------------------------------------------------------------------
PLAN_KEYS = ("preprocess.xray.img_size", "model.arch", "model.preset", "model.patch_size", "model.depth",
             "model.embed_dim", "train.batch_size", "train.num_workers", "train.steps", "train.amp")


def demo_trainer(ctx: Ctx) -> tuple[Any, Any, dict[str, Any]]:
    """A Trainer for configs/demo_xray.yaml with its plan, on a freshly written and ingested demo cohort."""
    from pipelines import runtime
    from pipelines.config import get_key, load_config
    from pipelines.dicom.synth import write_cohort
    from pipelines.pipeline import DEMO_DIFFICULTY, DEMO_STUDIES
    from pipelines.stages.ingest import run_ingest
    from pipelines.training import planning
    from pipelines.training.trainer import Trainer

    studies = ctx.sizes.demo_studies or DEMO_STUDIES["xray"]
    cohort = ctx.work / "demo_cohort"
    start = time.perf_counter()
    write_cohort(cohort, "xray", studies, seed=0, difficulty=DEMO_DIFFICULTY["xray"])
    config = load_config(ROOT / "configs" / "demo_xray.yaml", [
        f"data.dicom_root={cohort / 'dicom'}", f"data.labels={cohort / 'labels.csv'}", f"output.dir={ctx.work / 'run'}",
        "train.amp=auto", "tracking.system_metrics=false", f"tracking.uri=sqlite:///{ctx.work / 'mlflow.db'}"])
    run_ingest(config, track=False)
    config = planning.resolve(config).config
    ctx.rec.figure("setup_s", time.perf_counter() - start, "s")
    device = runtime.resolve_device(config.train.device, runtime.Dist())
    plan = {key: get_key(config, key) for key in PLAN_KEYS}
    return Trainer(config, runtime.Dist(), device), config, {"studies": studies, **plan}


def first_batch_facts(trainer: Any) -> dict[str, Any]:
    """Whether the training loader's batches arrive pinned, and the label dtype ``batches`` converts."""
    from pipelines import runtime
    from pipelines.data.dataset import IMAGE, LABEL

    loader = runtime.make_loader(trainer.train_set, batch_size=2, num_workers=0, shuffle=False, seed=0, epoch=0,
                                 info=trainer.info, device=trainer.device)
    batch = next(iter(loader))
    facts: dict[str, Any] = {"loader_pin_memory": bool(loader.pin_memory), "label_dtype": str(batch[LABEL].dtype)}
    if trainer.device.type == "cuda":
        facts.update(image_batch_pinned=bool(batch[IMAGE].is_pinned()), label_batch_pinned=bool(batch[LABEL].is_pinned()))
    return facts


def measure_demo_train(ctx: Ctx) -> None:
    import torch

    from pipelines import runtime

    model_only = bench_module("bench_train").model_only

    rec = ctx.rec
    trainer, config, plan = demo_trainer(ctx)
    amp = str(trainer.amp).replace("torch.", "") if trainer.amp is not None else "off (fp32)"
    rec.settings.update(config="configs/demo_xray.yaml + its plan (train.plan: auto)", cohort="pipelines.dicom.synth "
                        "write_cohort (what `medvit synth`/`medvit demo` write)", timed_epochs=ctx.sizes.timed_epochs,
                        statistic="median of the cached epochs", **plan)
    rec.note(amp_auto_picked=amp, train_series=len(trainer.train_set), device=str(trainer.device),
             **first_batch_facts(trainer))
    cold = trainer.train_epoch(progress=False)["images_per_sec"]  # fills the cache, warms the kernels
    trainer.epoch += 1
    rec.figure("first_epoch_images_per_s", cold, "images/s")
    rates = []
    for _ in range(ctx.sizes.timed_epochs):
        rates.append(trainer.train_epoch(progress=False)["images_per_sec"])
        trainer.epoch += 1
    rate = statistics.median(rates)
    rec.note(epochs_images_per_s=[round(r, 1) for r in rates])
    rec.figure("end_to_end_images_per_s", rate, "images/s")
    loader = runtime.make_loader(trainer.train_set, batch_size=config.train.batch_size, num_workers=0, shuffle=True,
                                 seed=0, epoch=99, info=trainer.info, device=trainer.device)
    batches = [(i, y) for i, y, _ in runtime.batches(loader, trainer.device)]
    model_rate = model_only(trainer, batches)
    rec.figure("model_only_images_per_s", model_rate, "images/s")
    rec.figure("end_to_end_vs_model_only", rate / model_rate, "x")
    if trainer.device.type == "cuda":
        rec.figure("peak_memory", torch.cuda.max_memory_allocated(trainer.device) / 2**30, "GiB")
    rec.headline = (f"amp auto -> {amp}; {rate:.0f} img/s end-to-end (cached), model-only {model_rate:.0f} img/s; "
                    f"{plan['model.arch']} {plan['model.preset']} {plan['preprocess.xray.img_size']} px, "
                    f"batch {plan['train.batch_size']}")


# ---- items: scoring ---------------------------------------------------------------------------------------
@dataclass
class ScoreSetup:
    """What bench_score's three measurements share."""

    n_studies: int
    per_study: float
    package: Path
    inputs: list[Path]
    loader: Any
    model: Any
    amp: Any


def score_setup(ctx: Ctx, bench: Any) -> ScoreSetup:
    from pipelines import runtime
    from pipelines.scoring.model_package import load_packaged_model

    s = ctx.sizes
    data = bench.cohort(ctx.work / "score_cache", "xray", s.score_studies, 0, None, 0.5)
    config = bench.bench_config(ROOT / s.score_config, "xray", data, list(s.score_overrides))
    package = bench.write_package(ctx.work / "model", config)
    loaded = load_packaged_model(str(package))
    inputs = [data / "dicom"]
    series = bench.scored_series(loaded, inputs, None)
    n_studies = len({x.study_uid for x in series})
    loader = bench.loader_like_score(loaded, series, s.score_batch, None, ctx.device)
    ctx.rec.settings.update(config=s.score_config, overrides=list(s.score_overrides), studies=n_studies,
                            series=len(series), batch_size=s.score_batch, workers=bench.auto_workers(None), amp="bf16",
                            model=f"{config.model.arch} {config.model.preset} (untrained package)",
                            repeats=s.score_repeats, statistic="best of interleaved rounds after a warm-up round")
    return ScoreSetup(n_studies, len(series) / max(n_studies, 1), package, inputs, loader,
                      loaded.model.to(ctx.device).eval(), runtime.resolve_amp("bf16", ctx.device))


def score_options(ctx: Ctx, setup: ScoreSetup, round_no: int) -> Any:
    from pipelines.stages.score import ScoreOptions

    out = ctx.work / f"score_out{round_no}"
    shutil.rmtree(out, ignore_errors=True)
    return ScoreOptions(inputs=setup.inputs, model=str(setup.package), out=out, overwrite=True,
                        batch_size=ctx.sizes.score_batch, device=ctx.device.type, amp="bf16")


def score_pin_facts(ctx: Ctx, loader: Any) -> dict[str, Any]:
    """The scoring loader's pin_memory and, on CUDA, whether its first batch arrives pinned."""
    from pipelines.data.dataset import IMAGE

    facts: dict[str, Any] = {"loader_pin_memory": bool(loader.pin_memory)}
    if ctx.device.type == "cuda":
        batch = next(iter(loader))
        facts["image_batch_pinned"] = bool(batch[IMAGE] is not None and batch[IMAGE].is_pinned())
    return facts


def measure_score(ctx: Ctx) -> None:
    bench = bench_module("bench_score")
    rec = ctx.rec
    setup = score_setup(ctx, bench)
    rec.note(**score_pin_facts(ctx, setup.loader), series_per_study=round(setup.per_study, 3))
    warm = bench.end_to_end(score_options(ctx, setup, 0))  # warm-up round: file cache, imports, allocator
    _, batches = bench.decode_only(setup.loader, keep=True)
    batches = [b.to(ctx.device) for b in batches]
    bench.model_only(setup.model, batches, ctx.device, setup.amp)
    rec.note(input_shape=list(batches[0].shape[1:]) if batches else None, warmup_studies_scored=warm["studies"])
    if warm["studies"] < setup.n_studies:
        rec.note(warning=f"run_score scored {warm['studies']} of {setup.n_studies} studies (see the log)")
    times: dict[str, list[float]] = {"end_to_end": [], "decode_only": [], "model_only": []}
    for round_no in range(1, ctx.sizes.score_repeats + 1):
        times["end_to_end"].append(bench.end_to_end(score_options(ctx, setup, round_no))["seconds"])
        times["decode_only"].append(bench.decode_only(setup.loader, keep=False)[0])
        times["model_only"].append(bench.model_only(setup.model, batches, ctx.device, setup.amp))
    rec.note(round_seconds={k: [round(t, 3) for t in v] for k, v in times.items()})
    rate = {k: setup.n_studies / min(v) for k, v in times.items()}
    for name, value in rate.items():
        rec.figure(f"{name}_studies_per_s", value, "studies/s")
    bound = min(rate["decode_only"], rate["model_only"])
    rec.figure("end_to_end_vs_min", rate["end_to_end"] / bound, "x")
    rec.headline = (f"end-to-end {rate['end_to_end']:.0f}/s, decode {rate['decode_only']:.0f}/s, model "
                    f"{rate['model_only']:.0f}/s studies ({rate['end_to_end'] / bound:.2f}x min)")


# ---- the items, in running order ---------------------------------------------------------------------------
ITEMS: dict[str, Callable[[Ctx], None]] = {
    "env": measure_env,
    "loaders": check_loaders,
    "vit_b16_eager": partial(measure_vit, "vit_base", False),
    "vit_s16_eager": partial(measure_vit, "vit_small", False),
    "mae_b16": measure_mae,
    "demo_train": measure_demo_train,
    "score": measure_score,
    "vit_b16_compile": partial(measure_vit, "vit_base", True),
    "vit_s16_compile": partial(measure_vit, "vit_small", True),
}


# ---- one item, in a child process ------------------------------------------------------------------------
def run_item(name: str, result: Path, device_name: str, smoke: bool, work: Path) -> None:
    """Run one item and save its record; never raises (the record says what went wrong)."""
    rec = Record(result)
    rec.save()
    try:
        import torch

        ctx = Ctx(torch.device(device_name), SMOKE if smoke else FULL, work, rec)
        ITEMS[name](ctx)
        rec.status = "ok"
    except ModuleNotFoundError as exc:
        rec.status, rec.reason = "skipped", (f"needs the Python package of module '{exc.name}', missing here: "
                                             "carry it as a wheel (see benchmarks/gpu_check.sh)")
    except Skip as exc:
        rec.status, rec.reason = "skipped", one_line(exc)
    except Exception as exc:  # recorded; the next item runs
        traceback.print_exc()
        rec.status, rec.reason = "failed", error_line(exc)
    rec.save()


# ---- the orchestrator ------------------------------------------------------------------------------------
def child_command(name: str, result: Path, device: str, smoke: bool, work: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--item", name, "--result", str(result),
           "--device", device, "--work", str(work)]
    return cmd + (["--smoke"] if smoke else [])


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else ""


def stop_group(proc: subprocess.Popen) -> None:
    """Kill the item's process group (its DataLoader workers and compile workers too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_child(name: str, limit: float, device: str, smoke: bool, work: Path) -> tuple[dict[str, Any], str]:
    """One item in its own process group under ``limit`` seconds: its record and its log."""
    folder = work / name
    folder.mkdir(parents=True)
    result, log = folder / "result.json", folder / "log.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    with log.open("w") as out:
        proc = subprocess.Popen(child_command(name, result, device, smoke, folder), stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            code = None
        else:
            stop_group(proc)  # leftovers (a worker that outlived the item)
    text = log.read_text(errors="replace")
    record = json.loads(result.read_text()) if result.is_file() else {"status": "running", "figures": {}}
    if code is None:
        record.update(status="failed", error=f"timed out after {limit:.0f} s (the item's limit); figures so far kept")
    elif record.get("status") == "running":
        record.update(status="failed", error=f"exited with code {code}: {last_line(text) or 'no output'}")
    return record, text


def add_ratios(items: dict[str, dict[str, Any]]) -> None:
    """Compiled vs eager speed-ups, and each ViT rate as a share of the measured bf16 matmul rate."""
    matmul = items.get("env", {}).get("figures", {}).get("bf16_matmul", {}).get("value")
    for name, item in items.items():
        figures = item.get("figures", {})
        eager = items.get(name.replace("_compile", "_eager"), {}).get("figures", {})
        for phase in ("train", "infer"):
            rate, tflops = figures.get(f"{phase}_images_per_s"), figures.get(f"{phase}_tflops")
            if name.endswith("_compile") and rate and eager.get(f"{phase}_images_per_s"):
                figures[f"{phase}_speedup_vs_eager"] = {
                    "value": round(rate["value"] / eager[f"{phase}_images_per_s"]["value"], 4), "unit": "x"}
            if tflops and tflops["value"] is not None and matmul:
                figures[f"{phase}_of_measured_matmul"] = {"value": round(100 * tflops["value"] / matmul, 4),
                                                          "unit": "% of env.bf16_matmul"}


def table(items: dict[str, dict[str, Any]]) -> str:
    rows = [("item", "status", "s", "figures")]
    for name, item in items.items():
        text = item.get("headline") or item.get("error") or item.get("reason") or ""
        if item["status"] != "ok" and item.get("headline"):
            text = f"{item.get('error') or item.get('reason')} | {text}"
        speedups = [item.get("figures", {}).get(f"{p}_speedup_vs_eager", {}).get("value") for p in ("train", "infer")]
        if all(speedups):
            text += f"; vs eager x{speedups[0]:.2f} train, x{speedups[1]:.2f} infer"
        rows.append((name, item["status"], f"{item.get('seconds', 0):.0f}", text))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:{widths[0]}}  {r[1]:{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows)


def output_path(out: str) -> Path:
    """``--out``; a relative one lands under ``$OUT`` when that is set (the GPU machine returns only $OUT)."""
    path = Path(out)
    if not path.is_absolute() and os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / path
    return path.resolve()


def write_json(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def selected_items(spec: str | None) -> list[str]:
    names = list(ITEMS) if not spec else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ITEMS]
    if unknown:
        print(f"gpu_check: unknown item(s) {', '.join(unknown)}; known: {', '.join(ITEMS)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return names


def deadline_items(names: list[str], sizes: Sizes, budget: float) -> Iterator[tuple[str, float | None]]:
    """Each item with its time limit: its own, cut to what is left of the budget (None: nothing is left)."""
    end = time.monotonic() + budget
    for name in names:
        left = end - time.monotonic()
        yield name, (min(sizes.limits[name], left) if left >= MIN_ITEM_S else None)


def run_items(names: list[str], report: dict[str, Any], args: argparse.Namespace, out: Path, work: Path) -> None:
    """Each item in turn under its limit; the JSON and the log are rewritten after every item."""
    sizes = SMOKE if args.smoke else FULL
    start = time.monotonic()
    with out.with_suffix(".log").open("w") as log:
        for name, limit in deadline_items(names, sizes, report["budget_s"]):
            text = ""
            if limit is None:
                record: dict[str, Any] = {"status": "skipped", "figures": {},
                                          "reason": f"under {MIN_ITEM_S} s left of the {report['budget_s']:.0f} s budget"}
            else:
                item_start = time.monotonic()
                record, text = run_child(name, limit, report["device"], args.smoke, work)
                record.update(seconds=round(time.monotonic() - item_start, 1), limit_s=round(limit))
            report["items"][name] = record
            log.write(f"==== {name}: {record['status']}\n{text[-LOG_TAIL_CHARS:]}\n")
            log.flush()
            add_ratios(report["items"])
            report["wall_s"] = round(time.monotonic() - start, 1)
            write_json(out, report)
            print(f"  {name:16s} {record['status']:8s} {record.get('seconds', 0):6.1f} s", flush=True)


def orchestrate(args: argparse.Namespace) -> int:
    import torch

    names = selected_items(args.items)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_check: no CUDA device is visible: the full check needs a GPU (--smoke runs it on CPU at tiny sizes)",
              file=sys.stderr)
        return EXIT_USAGE
    out = output_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "schema": SCHEMA, "mode": "smoke" if args.smoke else "full",
        "device": args.device if args.device != "auto" else ("cuda" if cuda else "cpu"),
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "budget_s": args.budget or (SMOKE if args.smoke else FULL).budget_s,
        "command": [sys.executable, *sys.argv], "items": {}}
    print(f"gpu_check: {report['mode']} on {report['device']}, budget {report['budget_s']:.0f} s, writing {out}",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        run_items(names, report, args, out, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["finished_utc"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_json(out, report)
    print(f"\n{table(report['items'])}\n\ngpu_check: {report['wall_s']:.0f} s; {out} (log {out.with_suffix('.log').name})")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device (CPU without CUDA)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON (relative: under $OUT when set)")
    parser.add_argument("--items", default=None, help=f"comma-separated subset of: {', '.join(ITEMS)}")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all items (default: 420; smoke 175)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (cohorts, packages, logs)")
    parser.add_argument("--item", choices=list(ITEMS), help=argparse.SUPPRESS)  # child process: one item
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.item:
        run_item(args.item, args.result, args.device, args.smoke, args.work)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
