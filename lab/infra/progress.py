"""Which progress bars `tqdm.auto` hands out: widgets in JupyterLab, plain text in batch kernels.

Every module of `lab` imports `from tqdm.auto import tqdm`. With ipywidgets installed, tqdm picks
its widget bar in any Jupyter kernel, which is right in JupyterLab and wrong under papermill:
there nobody renders the widget, and the executed notebook keeps only the widget's text fallback
frozen at 0%. So a batch kernel (LAB_PROGRESS=text, which `lab.commands.nbtools.execute` sets for
the kernels it starts; set it yourself for plain `papermill`) gets tqdm's text bar instead.
This runs from `lab/__init__`, before any lab module binds `tqdm.auto.tqdm`.
"""
import os


def use_text_bars():
    """Point tqdm.auto's tqdm (and so its trange) at the text bar, for this process."""
    import tqdm.asyncio
    import tqdm.auto
    tqdm.auto.tqdm = tqdm.asyncio.tqdm


if os.environ.get("LAB_PROGRESS") == "text":
    use_text_bars()
