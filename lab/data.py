"""Image data sets that exist offline. Every item is (image float32 [3, H, W] in [0, 1], int label),
or (image uint8 [3, H, W], label) with uint8=True: a quarter of the bytes to hold, pin and copy;
`to_float` turns it into the same float32 image, bit for bit, on the device where it is used.

    photos       deterministic random-resized crops of the real photos that ship with
                 scikit-image, scikit-learn and matplotlib; label = source photo
    fashion      Fashion-MNIST from Debian's dataset-fashion-mnist (grayscale -> RGB)
    digits       scikit-learn's 8x8 digits, for fast tests
    imagefolder  an ImageNet-style folder, ADM/RAE centre crop; unreadable images are skipped
                 and counted, never a crash mid-epoch

Images go through PIL only (torchvision.io does not load on the CPU torch build). `loader` (epochs)
and `step_loader` (the trainers' draws) stream them through workers, pinned on CUDA, split over ranks.
"""
import functools
import gzip
import importlib.util
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lab.image_folders import IMG_EXTENSIONS, check_split_layout, class_folders
from lab.infra.cache import FETCH_COMMAND, AssetError, cache_dir, cache_lock
from lab.trainutil import step_seed

# ----------------------------------------------------------------------------- helpers

def to_tensor(img, uint8=False):
    """PIL image -> float32 [3, H, W] in [0, 1] (uint8 [3, H, W] if uint8); grayscale / RGBA -> RGB."""
    arr = np.array(img.convert("RGB"), dtype=np.uint8 if uint8 else np.float32)  # a copy torch may own
    return torch.from_numpy(arr if uint8 else arr / 255.0).permute(2, 0, 1).contiguous()


def to_float(x, device=None):
    """Images as float32 in [0, 1] on `device`: uint8 ones are moved first (4x fewer bytes), then
    divided by 255 there; float ones are only moved. k / 255 is divided by a 0-dim tensor, not a
    Python number: CUDA turns division by a scalar into a multiplication by its reciprocal, which
    can be an ulp off, and the uint8 path must equal to_tensor's float32 image exactly."""
    x = x.to(device, non_blocking=True)
    return x.float() / torch.tensor(255.0, device=x.device) if x.dtype == torch.uint8 else x.float()


def center_crop_arr(img, size):
    """ADM's centre crop (guided-diffusion, also used by DiT/SiT/RAE): halve with a box filter while
    the short side is >= 2x size, resize the short side to `size` (bicubic), crop the centre."""
    while min(*img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top:top + size, left:left + size])


def _check_size(size):
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r}: must be a positive int (pixels of the square output)")


# ----------------------------------------------------------------------------- photos

# Real photographs that load without a network (no pooch); graphics and synthetic images left out.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
                  "immunohistochemistry", "retina", "camera", "coins", "moon", "clock", "brick",
                  "grass", "gravel")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MPL_PHOTOS = ("grace_hopper.jpg",)


def _load_photo(name):
    if name in SKIMAGE_PHOTOS:
        from skimage import data as skdata
        arr = getattr(skdata, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: (left, right, disparity)
        return Image.fromarray(arr)
    if name in SKLEARN_PHOTOS:  # read the file directly: importing sklearn.datasets takes seconds
        spec = importlib.util.find_spec("sklearn")
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "images" / name
        if path.exists():
            with Image.open(path) as img:
                return img.convert("RGB")
        from sklearn.datasets import load_sample_image
        return Image.fromarray(load_sample_image(name))
    import matplotlib.cbook
    with matplotlib.cbook.get_sample_data(name) as f:
        return Image.open(f).convert("RGB")


@functools.lru_cache(maxsize=1)
def _photos():
    loaded = {}
    for name in SKIMAGE_PHOTOS + SKLEARN_PHOTOS + MPL_PHOTOS:
        try:
            loaded[Path(name).stem] = _load_photo(name).convert("RGB")
        except Exception as err:  # a library version that needs a download for this one
            warnings.warn(f"sample photo {name!r} did not load offline ({err.__class__.__name__}); left out")
    if not loaded:
        raise RuntimeError("no sample photo loaded: install scikit-image, scikit-learn and matplotlib")
    return loaded


def photo_names():
    """Names of the source photos; the label of a `photos` item indexes this list."""
    return list(_photos())


def sample_photos(size=224):
    """Every source photo, centre-cropped to a square and resized: [P, 3, size, size] in [0, 1]."""
    _check_size(size)
    return torch.stack([to_tensor(center_crop_arr(img, size)) for img in _photos().values()])


def random_resized_box(rng, width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(left, top, w, h) of a random-resized crop (the Inception / torchvision recipe)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    s = min(width, height)  # fall back to the central square
    return (width - s) // 2, (height - s) // 2, s, s


class Photos(Dataset):
    """n deterministic random-resized crops (+ horizontal flip) of the sample photos.

    Item i depends only on (seed, i): source photo i % P (balanced labels), crop box and flip from
    a generator seeded with (seed, i), so any order, worker count or subset gives the same data."""

    def __init__(self, n=2048, size=64, seed=0, scale=(0.08, 1.0), flip=True, uint8=False):
        _check_size(size)
        self.n, self.size, self.seed, self.scale, self.flip, self.uint8 = int(n), size, seed, scale, flip, uint8
        self.classes = photo_names()
        self.images = list(_photos().values())

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        label = i % len(self.images)
        img = self.images[label]
        rng = np.random.default_rng([self.seed, i])
        left, top, w, h = random_resized_box(rng, img.width, img.height, self.scale)
        crop = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        if self.flip and rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(crop, self.uint8), label


def photos(n=2048, size=64, seed=0, scale=(0.08, 1.0), flip=True, uint8=False):
    """Deterministic random-resized crops of the real sample photos; label = source photo."""
    return Photos(n=n, size=size, seed=seed, scale=scale, flip=flip, uint8=uint8)


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_HELP = (f"Fashion-MNIST is not installed. Run `{FETCH_COMMAND}` (it installs Debian's "
                "package dataset-fashion-mnist, or unpacks it into the lab cache without root), or "
                "`sudo apt-get install dataset-fashion-mnist`, or set LAB_FASHION_DIR to a folder "
                "holding " + ", ".join(FASHION_FILES) + ".")


def _fashion_candidates():
    env = os.environ.get("LAB_FASHION_DIR")
    unpacked = cache_dir() / "fashion-mnist" / "usr" / "share" / "datasets" / "fashion-mnist"  # dpkg -x
    return ([Path(env)] if env else []) + [FASHION_SYSTEM, unpacked]


def fashion_dir(required=True):
    """Folder holding the Fashion-MNIST idx .gz files; AssetError naming the fix if none does."""
    for d in _fashion_candidates():
        if all((d / f).exists() for f in FASHION_FILES):
            return d
    if required:
        raise AssetError(FASHION_HELP)
    return None


def fetch_fashion(log=print):
    """Install Debian's dataset-fashion-mnist (root) or unpack its .deb into the cache (no root)."""
    d = fashion_dir(required=False)
    if d is not None:
        return d
    with cache_lock("fashion-mnist", log):
        return fashion_dir(required=False) or _install_fashion(log)


def _install_fashion(log):
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing dataset-fashion-mnist with apt-get")
        subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], capture_output=True)
        d = fashion_dir(required=False)
        if d is not None:
            return d
    if shutil.which("apt-get") and shutil.which("dpkg"):
        log("downloading dataset-fashion-mnist (apt-get download + dpkg -x, no root)")
        target = cache_dir() / "fashion-mnist"
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            proc = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp,
                                  capture_output=True, text=True)
            debs = list(Path(tmp).glob("dataset-fashion-mnist_*.deb"))
            if proc.returncode == 0 and debs:
                subprocess.run(["dpkg", "-x", str(debs[0]), str(target)], check=True)
    d = fashion_dir(required=False)
    if d is None:
        raise AssetError(FASHION_HELP)
    return d


def read_idx(path):
    """An idx file (MNIST format, optionally gzipped) as a numpy uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class ArrayImages(Dataset):
    """uint8 images [M, h, w] (grayscale) + labels, resized to `size` on the fly, as RGB."""

    def __init__(self, images, labels, size, classes, resample=Image.BILINEAR, uint8=False):
        self.images, self.targets = images, [int(y) for y in labels]
        self.size, self.classes, self.resample, self.uint8 = size, list(classes), resample, uint8

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), self.resample)
        return to_tensor(img, self.uint8), self.targets[i]


def fashion(split="train", n=None, size=64, uint8=False, offset=0):
    """Fashion-MNIST (60k train / 10k test), grayscale -> RGB, resized to size; labels 0..9.

    n: n images from `offset` on, or all (the files are shuffled: consecutive blocks are independent)."""
    if split not in ("train", "test"):
        raise ValueError(f"fashion(split={split!r}): allowed values are 'train', 'test'")
    _check_size(size)
    root = fashion_dir()  # AssetError naming the fix when missing
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if offset < 0 or offset + (n or 0) > len(labels):
        raise ValueError(f"fashion({split!r}): offset={offset} + n={n} > {len(labels)} images in the split")
    cut = slice(offset, None if n is None else offset + n)
    return ArrayImages(images[cut], labels[cut], size, FASHION_CLASSES, uint8=uint8)


# ----------------------------------------------------------------------------- digits

def digits(size=32, n=None, uint8=False):
    """scikit-learn's 1797 8x8 digits (0..16 levels -> [0, 1]), resized to size; labels 0..9."""
    from sklearn.datasets import load_digits
    _check_size(size)
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = d.target
    if n is not None:
        images, labels = images[:n], labels[:n]
    return ArrayImages(images, labels, size, [str(k) for k in range(10)], uint8=uint8)


# ----------------------------------------------------------------------------- image folder

class SkippedImageWarning(UserWarning):
    """An unreadable image was replaced by the next readable one."""


class ImageFolder(Dataset):
    """root/<class>/<image> (ImageNet train layout; a flat folder gets label 0), ADM centre crop.

    Files are checked lazily: an unreadable one is replaced by the next readable image, recorded in
    `.bad` (path -> error), counted in `.skipped`, and announced with a SkippedImageWarning that
    carries the running count. `make_loader` also warns once per epoch with the total."""

    def __init__(self, root, size=256, uint8=False):
        _check_size(size)
        self.root, self.size, self.uint8 = Path(root).expanduser(), size, uint8
        folders = class_folders(self.root)  # an empty class folder is an error, not a label gap
        self.classes = [name for name, _ in folders]
        self.samples = [(p, label) for label, (_, files) in enumerate(folders) for p in files]
        if not self.samples:
            raise FileNotFoundError(f"imagefolder: no images ({', '.join(IMG_EXTENSIONS)}) under "
                                    f"{str(self.root)!r}; expected root/<class>/<image>.jpg.")
        self.targets = [y for _, y in self.samples]
        self.bad = {}

    @property
    def skipped(self):
        return len(self.bad)

    def __len__(self):
        return len(self.samples)

    def _load(self, path):
        with Image.open(path) as img:
            return center_crop_arr(as_rgb(img), self.size)

    def __getitem__(self, i):
        for k in range(len(self.samples)):
            path, label = self.samples[(i + k) % len(self.samples)]
            if str(path) in self.bad:
                continue
            try:
                return to_tensor(self._load(path), self.uint8), label
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                self.bad[str(path)] = f"{err.__class__.__name__}: {err}"
                warnings.warn(f"imagefolder: skipped unreadable image {path} ({err.__class__.__name__}: "
                              f"{err}); {self.skipped} skipped so far under {self.root}",
                              SkippedImageWarning, stacklevel=2)
        raise RuntimeError(f"imagefolder: none of the {len(self.samples)} images under {self.root} is readable")


def as_rgb(img):
    """8-bit RGB of any PIL image. 16-bit integer images (modes I;16*, and I as PIL reads 16-bit
    PNG/TIFF) are scaled by 255/65535: convert("RGB") would clip every value above 255 to white."""
    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8))
    return img.convert("RGB")


def imagefolder(root, size=256, uint8=False):
    """ImageNet-style folder as (image [3, size, size] in [0, 1], class index), ADM centre crop."""
    return ImageFolder(root, size, uint8)


def imagefolder_split(root, split, n, size=256):
    """`n` images (evenly spaced over the sorted files) of root/train/ (split 'train') or root/val/
    ('test'). The first call checks the whole layout (train/ and val/, the same non-empty classes):
    the first data a notebook loads, so a bad folder is refused before anything trains."""
    if root is None:
        raise ValueError("data='imagefolder' needs data_root= a folder with train/ and val/ class folders")
    check_split_layout(root)
    ds = imagefolder(Path(root) / ("train" if split == "train" else "val"), size=size)
    if n < len(ds):  # a class-balanced-ish subset: evenly spaced indices over the sorted files
        ds = torch.utils.data.Subset(ds, torch.linspace(0, len(ds) - 1, n).long().tolist())
    return ds


# ----------------------------------------------------------------------------- loaders

class Loader(DataLoader):
    """A DataLoader that starts every pass with its DistributedSampler's set_epoch(.epoch) (a new
    shuffle per epoch; set .epoch to resume) and, at the end of each, warns with the skipped images."""

    epoch = 0

    def __iter__(self):
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        yield from super().__iter__()
        skipped = getattr(self.dataset, "skipped", 0)
        if skipped:
            warnings.warn(f"{skipped} unreadable image(s) skipped so far in {getattr(self.dataset, 'root', 'the data set')}"
                          f" (see .bad); each was replaced by the next readable one", SkippedImageWarning)


def make_loader(ds, batch_size=64, shuffle=True, seed=0, drop_last=False, num_workers=0):
    """DataLoader with a seeded shuffle (same order for the same seed); num_workers=0 on CPU."""
    g = torch.Generator().manual_seed(seed)
    return Loader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, drop_last=drop_last,
                  num_workers=num_workers, persistent_workers=num_workers > 0)


def _rank_world(rank, world, batch_size):
    """(rank, world) as given, else torch.distributed's when it is initialised (torchrun), else (0, 1)."""
    if world is None:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} is the global batch: it must divide by the {world} ranks")
    return int(rank or 0), int(world)


def _streaming(ds, seed, num_workers, device, **kw):
    """A Loader with workers, pinned memory and persistent workers on CUDA; in-process on a CPU."""
    cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if num_workers is None:  # a CPU run stays in one process; on CUDA the node's CPUs split over its ranks
        num_workers = min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if cuda else 0
    return Loader(ds, num_workers=num_workers, pin_memory=cuda, persistent_workers=num_workers > 0, **kw,
                  generator=torch.Generator().manual_seed(seed))  # not the global RNG: worker seeds from `seed`


def loader(ds, batch_size, seed=0, *, shuffle=True, drop_last=False, num_workers=None, device=None,
           rank=None, world=None):
    """Epochs of `ds` through a DistributedSampler: each rank loads batch_size // world items of every
    global batch, the ranks' items partition the epoch (drop_last=False pads it by repeating items).
    Epoch e is in the order of torch.randperm(len(ds)) seeded with seed + e, for any number of workers
    and on resume (unlike make_loader's). rank / world: default torch.distributed's, else (0, 1).
    num_workers: default min(8, CPUs per rank) on CUDA (pinned), 0 on a CPU. device: default CUDA if any."""
    rank, world = _rank_world(rank, world, batch_size)
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return _streaming(ds, seed, num_workers, device, batch_size=batch_size // world, sampler=sampler, drop_last=drop_last)


class StepBatches(Sampler):
    """The batch indices of steps start..steps-1, drawn as the trainers draw them: step k takes
    torch.randint(n, (batch_size,)) from trainutil.step_seed(seed, k, stream) (with replacement),
    and this rank keeps its rows [rank * b, (rank + 1) * b) of that global batch (b = batch_size // world)."""

    def __init__(self, n, batch_size, seed, steps, start=0, stream=0, rank=0, world=1):
        self.n, self.batch_size, self.seed, self.steps, self.start, self.stream = n, batch_size, seed, steps, start, stream
        self.rows = slice(rank * (batch_size // world), (rank + 1) * (batch_size // world))

    def __len__(self):
        return max(0, self.steps - self.start)

    def __iter__(self):
        for k in range(self.start, self.steps):
            g = torch.Generator().manual_seed(step_seed(self.seed, k, self.stream))
            yield torch.randint(self.n, (self.batch_size,), generator=g)[self.rows].tolist()


def step_loader(ds, batch_size, seed, steps, *, start=0, stream=0, num_workers=None, device=None, rank=None, world=None):
    """The batches of training steps start..steps-1 (StepBatches), loaded by workers ahead of the loop:
    the images that indexing the data in memory with the trainers' own per-step draws gives, in order."""
    rank, world = _rank_world(rank, world, batch_size)
    return _streaming(ds, seed, num_workers, device,
                      batch_sampler=StepBatches(len(ds), batch_size, seed, steps, start, stream, rank, world))


def tensors(ds, n=None):
    """(images [M, 3, H, W], labels [M]) of the first n items (all if None), stacked in memory."""
    m = len(ds) if n is None else min(n, len(ds))
    items = [ds[i] for i in range(m)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])
