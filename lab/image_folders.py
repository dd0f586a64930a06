"""The layout of an ImageNet-style image folder, checked before any compute.

`root/<class>/<image>` (a flat folder of images is one class). A data set for the generator
notebooks is `root/train/` and `root/val/` with the same classes. Notebook 05 used to find a
missing val/ only after its autoencoder had trained (hours at a real size), and an empty class
folder silently took a label index (labels 0, 1, 3: a wrong class count and chance level), so
the zoo's recipes check the whole layout when a recipe first names the folder (issue 21).
"""
from pathlib import Path

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_CHECKED = set()  # split folders whose layout passed in this process (a listing of ImageNet takes a while)


def is_image(p):
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


def class_folders(root):
    """[(class name, sorted image paths)] of `root`, one per sub-folder in name order, or one class
    named after `root` for a flat folder. A class folder without images is an error naming it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"imagefolder: root {str(root)!r} is not a folder. Pass the "
                                f"folder holding one sub-folder of images per class (ImageNet's train/).")
    subs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subs:
        return [(root.name, sorted(p for p in root.iterdir() if is_image(p)))]
    classes = [(d.name, sorted(p for p in d.rglob("*") if is_image(p))) for d in subs]
    for (name, files), d in zip(classes, subs):
        if not files:
            raise FileNotFoundError(
                f"imagefolder: class folder {str(d)!r} holds no images ({', '.join(IMG_EXTENSIONS)}): every "
                f"sub-folder of {str(root)!r} is a class, and an empty one would take a label no image has. "
                "Add its images, or move the folder out of the data set.")
    return classes


def check_split_layout(root):
    """Check `root/train/` and `root/val/` (the train and test splits) before anything is trained:
    both folders present, no class folder empty, the same classes in both."""
    root = Path(root).expanduser()
    if root in _CHECKED:
        return
    found = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"imagefolder: {str(root / split)!r} is missing: data_root {str(root)!r} "
                                    "must hold train/ and val/, each with one sub-folder of images per class "
                                    "(the held-out images come from val/).")
        found[split] = [name for name, _ in class_folders(root / split)]
    if found["train"] != found["val"]:
        only = sorted(set(found["train"]) ^ set(found["val"]))
        raise FileNotFoundError(f"imagefolder: train/ and val/ of {str(root)!r} hold different classes "
                                f"({len(found['train'])} vs {len(found['val'])}; in only one of them: "
                                f"{', '.join(only[:10])}): give both the same class folders.")
    _CHECKED.add(root)
