"""Images per second of the streamed ImageFolder path (ImageNet's): JPEG decode + RandomResizedCrop +
flip + ToTensor + Normalize, in DataLoader workers, as a training epoch reads it.

    python benchmarks/bench_imagefolder.py [--images 2000] [--workers 1 2] [--folder DIR]

It writes (once, into --folder) an ImageFolder of JPEGs shaped like ImageNet's training images:
500 x 375 pixels (ImageNet's most common size; its mean is about 400 x 350), quality 90, smooth
content plus texture so a file weighs about what an ImageNet JPEG does (~110 kB), 10 classes. Then
it times, for the training transform and the evaluation transform (Resize 256 + CenterCrop 224):
  - one process decoding and transforming image after image (images per second, and per CPU-second
    of that process: one core's rate even on a shared machine), and
  - ``StreamingImageFolder.batches`` (batches of 256, shuffled, pinned memory off: no GPU here) with
    each number of workers given,
and prints the figures and what a node needs to feed GPUs at a given rate.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))


def write_folder(root: Path, images: int, classes: int = 10, size: tuple[int, int] = (500, 375)) -> Path:
    """An ImageFolder (train/ and val/ with the same classes) of ``images`` training JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    per_class = max(1, images // classes)
    for split, count in (("train", per_class), ("val", max(1, per_class // 10))):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                path = folder / f"{k:05d}.JPEG"
                if path.exists():
                    continue
                coarse = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
                pixels = np.asarray(image, dtype=np.int16) + rng.integers(-40, 41, (size[1], size[0], 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return root


def one_core(data, augment: bool, count: int) -> tuple[float, float]:
    """Images per second of decode + transform in this process, image after image: per second of
    wall time and per CPU-second of this process (the second is what one core does when nothing else
    competes for it, on a shared machine too)."""
    from mcmi.data.folder import open_image

    transform = data._transform(augment)
    paths = [data.tree.samples[i][0] for i in range(min(count, len(data)))]
    torch.manual_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        transform(open_image(data.tree.loader, path))
    return len(paths) / (time.perf_counter() - start), len(paths) / (time.process_time() - cpu)


def loader(data, augment: bool) -> float:
    """Images per second of one epoch of ``data.batches`` (batches of 256), first batch excluded."""
    seen, start = 0, None
    for batch in data.batches(256, shuffle=augment, augment=augment,
                              generator=torch.Generator().manual_seed(0) if augment else None):
        if start is None:
            start = time.perf_counter()      # the workers have started; time the rest
            continue
        seen += len(batch)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="training images to generate and read")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--folder", default="results/bench_imagefolder")
    parser.add_argument("--gpu-rate", type=float, default=1229.0,
                        help="images/s one GPU trains (default: resnet18 on a V100 in fp32, as config/config.yaml)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from mcmi.data.folder import StreamingImageFolder

    root = write_folder(Path(args.folder), args.images)
    files = sorted((root / "train").rglob("*.JPEG"))
    print(f"{len(files)} training JPEGs in {root}, {np.mean([f.stat().st_size for f in files]) / 1e3:.0f} kB "
          f"on average, 500 x 375; {os.cpu_count()} CPUs here")
    rates = {}
    for augment, name in ((True, "train: RandomResizedCrop(224) + flip"), (False, "eval: Resize(256) + CenterCrop(224)")):
        single = StreamingImageFolder(root / "train", 224, train=augment, workers=0)
        wall, rates[name] = one_core(single, augment, min(len(single), 500))
        line = f"{name}: one process {wall:.0f} img/s ({rates[name]:.0f} per CPU-second)"
        for workers in args.workers:
            data = StreamingImageFolder(root / "train", 224, train=augment, workers=workers)
            line += f"; DataLoader with {workers} worker(s) {loader(data, augment):.0f} img/s"
        print(line)
    train = rates["train: RandomResizedCrop(224) + flip"]
    need = 8 * args.gpu_rate
    print(f"8 GPUs at {args.gpu_rate:.0f} img/s each need {need:.0f} img/s: {need / train:.0f} cores decoding at "
          f"this CPU's {train:.0f} img/s per CPU-second (plus one per GPU process for the training loop); "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
