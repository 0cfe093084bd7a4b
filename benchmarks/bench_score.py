"""`medvit score` throughput (scan + decode + preprocess + inference + outputs) against its parts, in one process.

    python benchmarks/bench_score.py                         # CPU: 300 X-ray studies, the demo X-ray model
    python benchmarks/bench_score.py --kind mri --studies 20 # the demo MRI model on a small MRI cohort
    python benchmarks/bench_score.py --device cuda --amp bf16 --config configs/xray_vit_s16.yaml --batch-size 64
    python benchmarks/bench_score.py --memory-studies 2000   # resident memory of one long run_score call
    python benchmarks/bench_score.py --engine spark          # Spark local[2] against local scoring, same folder
    python benchmarks/bench_score.py --engine spark --memory-studies 2000   # Spark executor memory over 2,000

Nothing is downloaded. A synthetic cohort is written once into ``--cache`` (a folder per kind, size, seed,
image size and difficulty; reused while its ``cohort.json`` says the same) and a model package folder holding
an untrained medvit ViT is written next to the run, in the format ``register`` writes: the ``--config`` model
and preprocessing (default: configs/xray_tiny_hybrid.yaml or configs/demo_mri.yaml, explicit recipes), with ``--set key=value`` overrides.

Throughput, in studies/s over the same studies (the series ``run_score`` itself selects):

* end-to-end: wall time of ``run_score`` minus its own ``load_model`` time, i.e. scan, decode, preprocess,
  batched inference, the study bookkeeping and the final files;
* decode-only: the same DataLoader that score builds (``Predictor.loader``: same batch size,
  workers, pin_memory, prefetch), iterated without the model;
* model-only: the packaged model's forward (inference mode, the same autocast, sigmoid and ``.cpu()`` as
  score) on the already-preprocessed batches, held on the device; series/s divided by series per study.

Target: end-to-end >= 0.8x min(decode-only, model-only). Timing: a warm-up round runs each method once and
is discarded (it warms the OS file cache, imports, pydicom/MONAI lazy tables and the allocator for all three
alike; its decode pass collects the batches model-only uses), then ``--repeats`` rounds run the three methods
interleaved and the best round of each is reported, so drift of a shared machine hits every method alike.
Note that with ``--workers 0`` decode and inference cannot overlap, so the
end-to-end rate is bounded by about 1 / (1/decode + 1/model). Each round's times are printed: on a small
machine shared with other jobs, torch's intra-op threads make the rounds swing several-fold; ``--threads 1``
gives steadier figures there.

Memory (``--memory-studies N``): one ``run_score`` call over N small X-ray studies. The resident set size
(psutil) of this process is read when the 200th study is written and when the last one is (by wrapping
``ScoreOutputs.add_study`` in this process only), after ``run_score`` returns, and polled every 20 ms for the
peak. Target: end / after-200 <= 1.2x.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import platform
import pstats
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import torch

from pipelines import runtime
from pipelines.config import PipelineConfig, load_config
from pipelines.data.dataset import IMAGE
from pipelines.data.scan_settings import selection_rules
from pipelines.dicom.scan import Series, scan
from pipelines.dicom.synth import MARKER, write_cohort
from pipelines.scoring.model_package import LoadedModel, load_packaged_model
from pipelines.scoring.outputs import ScoreOutputs
from pipelines.scoring.predictor import Predictor, series_item
from pipelines.stages.register import packaged_config
from pipelines.stages.score import ScoreOptions, auto_workers, run_score
from pipelines.training.modeling import build_model, model_kwargs, save_model

ROOT = Path(__file__).resolve().parent.parent
E2E_TARGET = 0.8
MEMORY_TARGET = 1.2


# ---- machine, data and model --------------------------------------------------------------------------
def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"device {device}{gpu}, load average {load}")


def cohort(cache: Path, kind: str, studies: int, seed: int, image_size: int | None, difficulty: float) -> Path:
    """A synthetic cohort folder, written unless the cache already holds one with the same parameters."""
    folder = cache / f"{kind}_n{studies}_seed{seed}_size{image_size or 'default'}_diff{difficulty:g}"
    marker = folder / MARKER
    if marker.is_file():
        record = json.loads(marker.read_text())
        if (record.get("kind") == kind and record.get("seed") == seed and record.get("difficulty") == difficulty
                and record.get("counts", {}).get("studies") == studies
                and (image_size is None or record.get("image_size") == image_size)):
            print(f"synth: reusing {folder} ({record['counts']['files']} files)")
            return folder
    start = time.perf_counter()
    summary = write_cohort(folder, kind, studies=studies, seed=seed, image_size=image_size, difficulty=difficulty)
    print(f"synth: wrote {summary.files} {kind} files ({summary.series} series) to {folder} "
          f"in {time.perf_counter() - start:.1f}s")
    return folder


def bench_config(path: Path, kind: str, data: Path, overrides: list[str]) -> PipelineConfig:
    config = load_config(path, [f"data.dicom_root={data / 'dicom'}", f"data.labels={data / 'labels.csv'}",
                                *overrides])
    if config.data.kind != kind:
        raise SystemExit(f"{path.name} is a {config.data.kind} config but --kind is {kind}: pass --kind "
                         f"{config.data.kind} or another --config")
    return config


def write_package(folder: Path, config: PipelineConfig) -> Path:
    """An untrained model in the package format ``register`` writes (weights, packaged config, meta)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    kwargs = model_kwargs(config)
    save_model(folder / "best.safetensors", build_model(kwargs), kwargs)
    (folder / "config.yaml").write_text(packaged_config(config))
    (folder / "meta.json").write_text(json.dumps({"threshold": 0.5, "aggregate": "max", "kind": config.data.kind,
                                                  "name": f"bench_{config.data.kind}"}))
    return folder


def scored_series(loaded: LoadedModel, inputs: list[Path], workers: int | None) -> list[Series]:
    """The series run_score scores: same scan, selection rules and kind filter."""
    scanned = scan([str(p) for p in inputs], selection_rules(loaded.config), workers=auto_workers(workers))
    return list(scanned.series)


# ---- the three measurements -----------------------------------------------------------------------------
def loader_like_score(loaded: LoadedModel, series: list[Series], batch_size: int, workers: int | None,
                      device: torch.device) -> torch.utils.data.DataLoader:
    """The DataLoader run_score scores from (``Predictor.loader``)."""
    predictor = Predictor.from_package(loaded, device=device, batch_size=batch_size, workers=auto_workers(workers))
    return predictor.loader([series_item(s) for s in series])


def end_to_end(options: ScoreOptions) -> dict[str, float]:
    """Seconds of one run_score call without its model loading, and its own split."""
    start = time.perf_counter()
    result = run_score(options)
    wall = time.perf_counter() - start
    timings = result.summary["timings_s"]
    counts = result.summary["counts"]
    if counts["failures"]:
        print(f"warning: run_score reported {counts['failures']} failures")
    return {"seconds": wall - timings["load_model"], "scan": timings["scan"], "loop": timings["score"],
            "rest": wall - timings["load_model"] - timings["scan"] - timings["score"],
            "studies": counts["studies_scored"]}


def decode_only(loader: torch.utils.data.DataLoader, keep: bool) -> tuple[float, list[torch.Tensor]]:
    """Seconds to iterate the loader (and the image batches, when ``keep``)."""
    kept = []
    start = time.perf_counter()
    for batch in loader:
        if keep and batch[IMAGE] is not None:
            kept.append(batch[IMAGE])
    return time.perf_counter() - start, kept


def model_only(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device,
               amp: torch.dtype | None) -> float:
    """Seconds of the forward pass score runs, on batches already on the device."""
    start = time.perf_counter()
    for images in batches:
        with torch.inference_mode(), runtime.autocast(device, amp):
            torch.sigmoid(model(images).float().reshape(-1)).cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_throughput(args: argparse.Namespace, config_path: Path, device: torch.device, work: Path) -> None:
    data = cohort(args.cache, args.kind, args.studies, args.seed, args.image_size, args.difficulty)
    config = bench_config(config_path, args.kind, data, args.set)
    package = write_package(work / "model", config)
    loaded = load_packaged_model(str(package))
    inputs = [data / "dicom"]
    series = scored_series(loaded, inputs, args.workers)
    n_studies = len({s.study_uid for s in series})
    per_study = len(series) / max(n_studies, 1)
    amp = runtime.resolve_amp(args.amp, device)
    workers = auto_workers(args.workers)
    print(f"\n## {args.kind}: {n_studies} studies, {len(series)} series ({per_study:.2f} per study), "
          f"{config_path.name} ({config.model.arch} {config.model.preset}), batch {args.batch_size}, "
          f"workers {workers}, amp {amp or 'off'}")

    loader = loader_like_score(loaded, series, args.batch_size, args.workers, device)
    model = loaded.model.to(device).eval()
    rounds = 0

    def options() -> ScoreOptions:
        return ScoreOptions(inputs=inputs, model=str(package), out=work / f"out{rounds}", overwrite=True,
                            batch_size=args.batch_size, workers=args.workers, device=device.type, amp=args.amp)

    # warm-up round (discarded): file cache, imports, lazy tables; keeps the preprocessed batches
    e2e = end_to_end(options())
    _, batches = decode_only(loader, keep=True)
    batches = [b.to(device) for b in batches]
    model_only(model, batches, device, amp)
    shape = tuple(batches[0].shape[1:]) if batches else ()
    print(f"warm-up: end-to-end {e2e['seconds']:.2f}s, input {shape}, {e2e['studies']} studies scored")

    times: dict[str, list[float]] = {"e2e": [], "decode": [], "model": []}
    split = e2e
    for rounds in range(1, args.repeats + 1):
        shutil.rmtree(work / f"out{rounds - 1}", ignore_errors=True)
        e2e = end_to_end(options())
        if e2e["seconds"] < min(times["e2e"], default=float("inf")):
            split = e2e
        times["e2e"].append(e2e["seconds"])
        times["decode"].append(decode_only(loader, keep=False)[0])
        times["model"].append(model_only(model, batches, device, amp))
    print("round times (s): " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items()))

    rate = {k: n_studies / min(v) for k, v in times.items()}
    bound = min(rate["decode"], rate["model"])
    verdict = "ok" if rate["e2e"] >= E2E_TARGET * bound else "below target"
    print(f"best of {args.repeats} interleaved rounds, studies/s:")
    print(f"decode-only (loader)      {rate['decode']:9.1f}/s   ({rate['decode'] * per_study:.1f} series/s)")
    print(f"model-only (forward)      {rate['model']:9.1f}/s   ({rate['model'] * per_study:.1f} series/s)")
    print(f"end-to-end run_score      {rate['e2e']:9.1f}/s   {rate['e2e'] / bound:.2f}x min(decode, model) "
          f"(target >= {E2E_TARGET}x: {verdict})")
    print(f"  vs decode-only {rate['e2e'] / rate['decode']:.2f}x, vs model-only {rate['e2e'] / rate['model']:.2f}x, "
          f"vs serial bound 1/(1/decode + 1/model) "
          f"{rate['e2e'] * (1 / rate['decode'] + 1 / rate['model']):.2f}x")
    print(f"  best end-to-end run: {split['seconds']:.2f}s = scan {split['scan']:.2f}s + score loop "
          f"{split['loop']:.2f}s + merge/publish/other {split['rest']:.2f}s")

    if args.profile:
        rounds += 1
        profiler = cProfile.Profile()
        profiler.runcall(run_score, options())
        print("\n## cProfile of one end-to-end run_score (top 20 by own time)")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


# ---- engines ----------------------------------------------------------------------------------------------
def bench_engines(args: argparse.Namespace, config_path: Path, device: torch.device, work: Path) -> None:
    """``--engine spark``: end-to-end studies/s of Spark against local scoring, same folder, same process.

    A warm-up run of each engine comes first (Spark's session start-up and executor model loading are not
    counted); then ``--repeats`` interleaved rounds, the best of each kept."""
    data = cohort(args.cache, args.kind, args.studies, args.seed, args.image_size, args.difficulty)
    package = write_package(work / "model", bench_config(config_path, args.kind, data, args.set))
    n_studies = len(pd.read_csv(data / "labels.csv"))
    print(f"\n## engines: {args.kind}, {n_studies} studies, {config_path.name}, Spark {args.spark_master}")

    def seconds(engine: str, round_: int) -> float:
        options = ScoreOptions(inputs=[data / "dicom"], model=str(package), out=work / f"{engine}{round_}",
                               overwrite=True, batch_size=args.batch_size, workers=args.workers,
                               device=device.type, amp=args.amp, engine=engine, spark_master=args.spark_master)
        start = time.perf_counter()
        result = run_score(options)
        assert result.summary["counts"]["studies_scored"] == n_studies, result.summary["counts"]
        return time.perf_counter() - start

    for engine in ("spark", "local"):
        print(f"warm-up {engine}: {seconds(engine, 0):.2f}s")
    times: dict[str, list[float]] = {"local": [], "spark": []}
    for round_ in range(1, args.repeats + 1):
        for engine in times:
            times[engine].append(seconds(engine, round_))
    print("round times (s): " + "; ".join(f"{k} " + " ".join(f"{s:.2f}" for s in v) for k, v in times.items()))
    rate = {k: n_studies / min(v) for k, v in times.items()}
    ratio = rate["spark"] / rate["local"]
    print(f"local {rate['local']:.1f} studies/s, spark {rate['spark']:.1f} studies/s: {ratio:.2f}x "
          f"(target >= {E2E_TARGET}x: {'ok' if ratio >= E2E_TARGET else 'below target'})")


# ---- memory -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def rss_at_studies(marks: dict[str, int], first: int) -> Iterator[dict[str, int]]:
    """Record this process's RSS when study ``first`` and every later study is written (last one wins)."""
    process = psutil.Process()
    original = ScoreOutputs.add_study
    seen = {"studies": 0}

    def add_study(self, *a, **kw):
        original(self, *a, **kw)
        seen["studies"] += 1
        if seen["studies"] == first:
            marks["first"] = process.memory_info().rss
        marks["last"] = process.memory_info().rss

    ScoreOutputs.add_study = add_study
    try:
        yield seen
    finally:
        ScoreOutputs.add_study = original


@contextlib.contextmanager
def polling(sample: Callable[[], None], interval: float) -> Iterator[None]:
    """Call ``sample`` every ``interval`` seconds from a thread until the block ends."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            sample()
            stop.wait(interval)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def peak_rss(interval: float = 0.02) -> Iterator[dict[str, int]]:
    """Poll this process's RSS (and its DataLoader workers') from a thread; the peaks when the block ends."""
    process = psutil.Process()
    peaks = {"self": 0, "with_children": 0}

    def sample() -> None:
        own = process.memory_info().rss
        children = 0
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                children += child.memory_info().rss
        peaks["self"] = max(peaks["self"], own)
        peaks["with_children"] = max(peaks["with_children"], own + children)

    with polling(sample, interval):
        yield peaks


@contextlib.contextmanager
def spark_rss(interval: float = 0.25) -> Iterator[list[tuple[float, int, int, int]]]:
    """Poll the Spark processes under this one: (seconds, sum and max RSS of the Python workers, JVM RSS)."""
    process, samples, start = psutil.Process(), [], time.perf_counter()

    def sample() -> None:
        workers, jvm = [], 0
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                line = " ".join(child.cmdline())
                if "pyspark.daemon" in line or "pyspark.worker" in line:
                    workers.append(child.memory_info().rss)
                elif "java" in child.name():
                    jvm += child.memory_info().rss
        samples.append((time.perf_counter() - start, sum(workers), max(workers, default=0), jvm))

    with polling(sample, interval):
        yield samples


def bench_spark_memory(args: argparse.Namespace, config_path: Path, work: Path) -> None:
    """``--memory-studies N --engine spark``: executor (Python worker) and JVM memory over one long run, sampled
    every 0.25 s; the workers import torch and load the model in the first part, so flatness is read off the
    last third."""
    data = cohort(args.cache, "xray", args.memory_studies, args.seed, args.memory_image_size, args.difficulty)
    package = write_package(work / "model", bench_config(config_path, "xray", data, args.set))
    mb = 1 / 2**20

    driver_before = psutil.Process().memory_info().rss
    with spark_rss() as samples:
        options = ScoreOptions(inputs=[data / "dicom"], model=str(package), out=work / "out", overwrite=True,
                               batch_size=args.batch_size, engine="spark", spark_master=args.spark_master)
        start = time.perf_counter()
        result = run_score(options)
        wall = time.perf_counter() - start
    driver_after = psutil.Process().memory_info().rss
    summary = result.summary
    print(f"\n## spark memory: {summary['counts']['studies_scored']} X-ray studies ({args.memory_image_size}px files, "
          f"{config_path.name}), Spark {args.spark_master}, one run_score: {wall:.1f}s, "
          f"{summary['studies_per_sec']:.1f} studies/s, failures {summary['counts']['failures']}")
    busy = [x for x in samples if x[1] > 0]
    if not busy:
        print("no Python worker was seen: no memory figures")
        return
    t_end = busy[-1][0]
    print("time into the run   workers RSS (sum, largest)   JVM RSS")
    for frac in [i / 10 for i in range(1, 11)]:
        t, total, largest, jvm = min(busy, key=lambda x: abs(x[0] - frac * t_end))
        print(f"{t:6.1f}s ({frac:4.0%})      {total * mb:8.1f} MiB, {largest * mb:7.1f} MiB   {jvm * mb:8.1f} MiB")
    tail = [x[2] for x in busy if x[0] >= 2 / 3 * t_end]  # the worker is warm (torch, model) by then
    print(f"largest worker over the last third of the run: {min(tail) * mb:.1f}-{max(tail) * mb:.1f} MiB "
          f"({max(tail) / min(tail):.2f}x; target flat); driver RSS {driver_before * mb:.1f} -> "
          f"{driver_after * mb:.1f} MiB")


def bench_memory(args: argparse.Namespace, config_path: Path, device: torch.device, work: Path) -> None:
    data = cohort(args.cache, "xray", args.memory_studies, args.seed, args.memory_image_size, args.difficulty)
    config = bench_config(config_path, "xray", data, args.set)
    package = write_package(work / "model", config)
    options = ScoreOptions(inputs=[data / "dicom"], model=str(package), out=work / "out", overwrite=True,
                           batch_size=args.batch_size, workers=args.workers, device=device.type, amp=args.amp)
    mb = 1 / 2**20
    first = 200
    marks: dict[str, int] = {}
    before = psutil.Process().memory_info().rss
    with peak_rss() as peaks, rss_at_studies(marks, first) as seen:
        start = time.perf_counter()
        result = run_score(options)
        wall = time.perf_counter() - start
        after = psutil.Process().memory_info().rss
    summary = result.summary
    print(f"\n## memory: {summary['counts']['studies_scored']} X-ray studies "
          f"({args.memory_image_size}px files, {config_path.name}, input {config.preprocess.xray.img_size}px), "
          f"batch {args.batch_size}, workers {auto_workers(args.workers)}")
    print(f"run_score: {wall:.1f}s ({summary['timings_s']}), {summary['studies_per_sec']:.1f} studies/s in the "
          f"score loop, {seen['studies']} studies written, failures {summary['counts']['failures']}")
    if "first" not in marks:
        print(f"fewer than {first} studies were written: no memory ratio")
        return
    print(f"RSS before run_score      {before * mb:8.1f} MiB")
    print(f"RSS after {first} studies     {marks['first'] * mb:8.1f} MiB   1.00x")
    print(f"RSS at the last study     {marks['last'] * mb:8.1f} MiB   {marks['last'] / marks['first']:.2f}x")
    print(f"RSS after run_score       {after * mb:8.1f} MiB   {after / marks['first']:.2f}x   "
          f"(target <= {MEMORY_TARGET}x: {'ok' if after <= MEMORY_TARGET * marks['first'] else 'above target'})")
    print(f"peak RSS (polled 20 ms)   {peaks['self'] * mb:8.1f} MiB   {peaks['self'] / marks['first']:.2f}x   "
          f"(with loader workers: {peaks['with_children'] * mb:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["xray", "mri"], default="xray")
    parser.add_argument("--config", type=Path, default=None, help="model + preprocessing (default: the demo "
                        "config of --kind)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set preprocess.xray.img_size=128 (repeatable)")
    parser.add_argument("--studies", type=int, default=None, help="studies to score (default: 300 X-ray, 20 MRI)")
    parser.add_argument("--image-size", type=int, default=None, help="synthetic file size (default: synth's, "
                        "256 X-ray / 64 MRI in-plane)")
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: score's, 0 on "
                        "<= 2 cores)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's; "
                        "1 is steadier on a small machine other jobs share)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (best is kept)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one end-to-end run")
    parser.add_argument("--memory-studies", type=int, default=None,
                        help="memory mode: score this many X-ray studies in one run_score call")
    parser.add_argument("--memory-image-size", type=int, default=96, help="synthetic file size in memory mode")
    parser.add_argument("--engine", choices=["local", "spark"], default="local",
                        help="spark: compare --engine spark with local end to end (Spark must be installed)")
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medvit-bench-score",
                        help="folder of the synthetic cohorts (reused across runs)")
    args = parser.parse_args()
    if args.memory_studies is not None:
        args.kind = "xray"
    args.studies = args.studies or (300 if args.kind == "xray" else 20)
    # Explicit model configs: demo_xray.yaml leaves the network to the training plan, which an untrained
    # bench package never runs (it fell back to the schema's vit_small at 224 px).
    default = {"xray": "xray_tiny_hybrid.yaml", "mri": "demo_mri.yaml"}[args.kind]
    config_path = args.config or ROOT / "configs" / default
    if args.threads:
        torch.set_num_threads(args.threads)
    device = runtime.resolve_device(args.device, runtime.Dist())
    print(f"# bench_score: {machine(device)}")
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        if args.memory_studies is not None and args.engine == "spark":
            bench_spark_memory(args, config_path, Path(tmp))
        elif args.memory_studies is not None:
            bench_memory(args, config_path, device, Path(tmp))
        elif args.engine == "spark":
            bench_engines(args, config_path, device, Path(tmp))
        else:
            bench_throughput(args, config_path, device, Path(tmp))
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
