"""Throughput of medvit's ViT against MONAI's ViT and an explicit-attention medvit, in one process.

    python benchmarks/bench_vit.py                       # CPU, fp32: ViT-S/16 at 224 (batch 8) + 3D case
    python benchmarks/bench_vit.py --device cuda --amp bf16 --preset vit_base --batch 64 --no-3d

Models are timed in interleaved rounds (warm-up first) and the median round is reported, so that drift
of the machine hits every model alike. Ratios are against MONAI's ``monai.networks.nets.ViT`` built with
the same dimensions. On CUDA the model FLOP utilisation (MFU) against the GPU's bf16 peak is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import medvit

# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs this project is lent.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def vit_flops_per_image(model: medvit.VisionTransformer) -> float:
    """Forward FLOPs (multiply-add = 2) of the patch embedding, blocks and head; norms ignored."""
    tokens = model.num_patches + model.num_prefix_tokens
    dim = model.embed_dim
    hidden = model.blocks[0].mlp.fc1.out_features
    patch_in = model.patch_embed.proj.in_channels * int(torch.tensor(model.patch_size).prod())
    embed = 2 * model.num_patches * patch_in * dim
    per_block = 2 * tokens * (3 * dim * dim + dim * dim + 2 * dim * hidden) + 2 * 2 * tokens * tokens * dim
    return embed + len(model.blocks) * per_block + 2 * dim * model.num_classes


def monai_vit(model: medvit.VisionTransformer) -> nn.Module:
    """MONAI's ViT with the same dimensions as ``model`` (qkv bias on, no Tanh on the head)."""
    from monai.networks.nets import ViT

    return ViT(
        in_channels=model.patch_embed.proj.in_channels,
        img_size=model.img_size,
        patch_size=model.patch_size,
        hidden_size=model.embed_dim,
        mlp_dim=model.blocks[0].mlp.fc1.out_features,
        num_layers=len(model.blocks),
        num_heads=model.blocks[0].attn.num_heads,
        proj_type="conv",
        classification=True,
        num_classes=model.num_classes,
        qkv_bias=True,
        post_activation=None,
        spatial_dims=model.spatial_dims,
    )


def logits_of(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # MONAI's ViT returns (logits, hidden states)


def make_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None):
    """(train_step, infer_step) closures for one model."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def context():
        return torch.autocast(x.device.type, dtype=amp) if amp else contextlib.nullcontext()

    def train_step() -> None:
        model.train()
        with context():
            loss = nn.functional.cross_entropy(logits_of(model(x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def infer_step() -> None:
        model.eval()
        with context():
            logits_of(model(x))

    return train_step, infer_step


def time_rounds(steps: dict[str, Callable[[], None]], batch: int, iters: int, rounds: int,
                device: torch.device) -> dict[str, float]:
    """Median images/s per named step over interleaved rounds of ``iters`` calls each."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in steps.values():  # warm-up (allocator, kernels, autotuning)
        for _ in range(2):
            step()
    sync()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(iters):
                step()
            sync()
            rates[name].append(batch * iters / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def run_case(title: str, model_kwargs: dict, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    sdpa = medvit.create_model(args.preset if "preset" not in model_kwargs else model_kwargs.pop("preset"),
                               **model_kwargs)
    explicit = medvit.VisionTransformer(**{**sdpa.config, "attn_impl": "explicit"})
    models = {"medvit": sdpa, "medvit-explicit": explicit, "monai": monai_vit(sdpa)}
    x = torch.randn(args.batch if sdpa.spatial_dims == 2 else args.batch_3d, sdpa.patch_embed.proj.in_channels,
                    *sdpa.img_size, device=device)
    y = torch.randint(0, sdpa.num_classes, (x.shape[0],), device=device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[args.amp]
    train_steps, infer_steps = {}, {}
    for name, model in models.items():
        model.to(device)
        if args.compile:
            model.compile()
        train_steps[name], infer_steps[name] = make_steps(model, x, y, amp)
    train = time_rounds(train_steps, x.shape[0], args.iters, args.rounds, device)
    infer = time_rounds(infer_steps, x.shape[0], args.iters, args.rounds, device)

    flops = vit_flops_per_image(sdpa)
    print(f"\n## {title}: input {tuple(x.shape)}, {args.amp}, {device.type}, "
          f"{flops / 1e9:.2f} GFLOP/image forward")
    print(f"{'model':16s} {'train img/s':>12s} {'vs monai':>9s} {'infer img/s':>12s} {'vs monai':>9s}")
    for name in models:
        print(f"{name:16s} {train[name]:12.1f} {train[name] / train['monai']:8.2f}x "
              f"{infer[name]:12.1f} {infer[name] / infer['monai']:8.2f}x")
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in gpu), None)
        if peak:
            for phase, rate, mult in (("train", train["medvit"], 3), ("infer", infer["medvit"], 1)):
                achieved = rate * flops * mult / 1e12
                print(f"medvit {phase}: {achieved:.1f} TFLOP/s = MFU {100 * achieved / peak:.1f}% of {gpu} "
                      f"bf16 peak {peak:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--preset", default="vit_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batch-3d", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-3d", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# bench_vit: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    run_case(f"{args.preset} 2D", {"in_chans": 1, "num_classes": 2}, args, device)
    if not args.no_3d:
        preset_3d = args.preset.replace("vit_", "vit3d_")
        run_case(f"{preset_3d} 3D", {"preset": preset_3d, "in_chans": 1, "num_classes": 2}, args, device)


if __name__ == "__main__":
    main()
