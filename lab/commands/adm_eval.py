"""Evaluate as the papers do: `python -m lab.commands.adm_eval SAMPLES.npz REF.npz --inception PATH [--json]`.

    SAMPLES.npz REF.npz --inception PATH   FID, sFID, IS, precision, recall of an ADM sample batch
                                           against an ADM reference batch (lab.adm_eval), each
                                           named by the weights file that produced it
    --pack FOLDER OUT.npz                  a folder of sample images (PNG, sorted by name) -> an ADM
                                           sample batch (uint8 NHWC as arr_0), as RAE builds its .npz
    --reference IMAGES.npz OUT.npz --inception PATH
                                           a reference batch of your own: the images of IMAGES.npz
                                           (arr_0) with mu, sigma, mu_s, sigma_s computed once

A lab generator writes its sample batch with lab.adm_eval.export_samples (RAE's class-balanced
'equal' labels as arr_1). Without the Inception weights file there is no FID: FD-effnet
(lab.metrics) is the offline default.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from lab import adm_eval
from lab.feature_nets import FID_WEIGHTS_HELP

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def folder_images(folder):
    """uint8 [N, H, W, 3] of the images in a folder, sorted by file name; all of one size."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for p in files:
        with Image.open(p) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        if images[-1].shape != images[0].shape:
            h, w, h0, w0 = *images[-1].shape[:2], *images[0].shape[:2]
            raise ValueError(f"{p} is {w}x{h}, the first image {w0}x{h0}: a sample batch has one size")
    return np.stack(images)


def _print_result(result):
    for k, v in result.items():
        if k != "caveat":
            print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    if "caveat" in result:
        print(f"caveat: {result['caveat']}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.commands.adm_eval", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("first", help="SAMPLES.npz (or FOLDER with --pack, IMAGES.npz with --reference)")
    ap.add_argument("second", help="REF.npz (or OUT.npz with --pack / --reference)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--pack", action="store_true", help="write a folder of images as an ADM sample batch")
    mode.add_argument("--reference", action="store_true", help="write a reference batch with its statistics")
    ap.add_argument("--inception", help="Inception-v3 weights file (pt_inception-2015-12-05-6726825d.pth)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None, help="default: LAB_DEVICE, else CUDA when present")
    args = ap.parse_args(argv)
    try:
        if args.pack:
            out = adm_eval.save_samples_npz(args.second, folder_images(args.first))
            print(f"wrote {out}: {adm_eval.npz_image_shape(out)}")
            return
        if args.inception is None:
            raise SystemExit("adm_eval: --inception PATH is needed (the Inception-v3 weights file). " + FID_WEIGHTS_HELP)
        if not Path(args.inception).exists():
            raise SystemExit(f"adm_eval: --inception {args.inception} does not exist. " + FID_WEIGHTS_HELP)
        if args.reference:
            images = np.concatenate(list(adm_eval.iter_npz_images(args.first, args.batch_size)))
            model = adm_eval.load_inception(args.inception, device=args.device)
            out = adm_eval.save_reference_npz(args.second, images, model, args.batch_size)
            print(f"wrote {out}: {len(images)} images with mu, sigma, mu_s, sigma_s")
            return
        result = adm_eval.evaluate_npz(args.first, args.second, args.inception, args.batch_size, args.device, 299)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        raise SystemExit(f"adm_eval: {e}") from None
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_result(result)


if __name__ == "__main__":
    main()
