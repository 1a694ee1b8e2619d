"""Plot image and text embeddings of a fixed validation subset in 2-D (PCA, t-SNE) during training.

The LightningModule provides `embed_images(pixel_values) -> [B, D]` and `embed_texts(captions) -> [B, D]`
(L2-normalized); validation batches are `ImageTextBatch`es.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.seed import isolate_rng

from prismrl.choices import check_positive_int
from prismrl.data.batches import ImageTextBatch
from prismrl.evaluation.plotting import log_figure, new_figure, run_dir, save_png_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def tsne_perplexity(num_points: int) -> float:
    """t-SNE perplexity for `num_points` points: min(30, max(1, (num_points - 1) / 3)), always < num_points."""
    return float(min(30.0, max(1.0, (num_points - 1) / 3.0)))


def _pca_2d(points: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    k = min(2, points.shape[0], points.shape[1])
    out = PCA(n_components=k, random_state=seed).fit_transform(points)  # [N, k]
    return np.pad(out, ((0, 0), (0, 2 - k)))  # [N, 2]


def _tsne_2d(points: np.ndarray, seed: int) -> np.ndarray:
    """Barnes-Hut t-SNE on one OpenMP thread: the layout then does not depend on the core count, and the
    thread pool does not fight torch's (a few hundred points take about a second either way)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    tsne = TSNE(n_components=2, perplexity=tsne_perplexity(points.shape[0]), init="pca", random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(points)  # [N, 2]


PROJECTIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"pca": _pca_2d, "tsne": _tsne_2d}


def project_2d(points: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """Project points [N, D] to [N, 2] with the named method ("pca" or "tsne")."""
    if method not in PROJECTIONS:
        raise ValueError(f"project_2d: method must be one of {sorted(PROJECTIONS)}, received {method!r}")
    if points.ndim != 2 or points.shape[0] < 2:
        raise ValueError(f"project_2d: points must be [N, D] with N >= 2, received shape {tuple(points.shape)}")
    return PROJECTIONS[method](np.asarray(points, dtype=np.float64), seed).astype(np.float32)


def collect_fixed_subset(batches: Iterable[Any], num_samples: int) -> ImageTextBatch:
    """The first `num_samples` samples of an iterable of ImageTextBatch, concatenated on CPU."""
    pixels: list[torch.Tensor] = []
    captions: list[str] = []
    labels: list[torch.Tensor] = []
    count = 0
    for batch in batches:
        if not isinstance(batch, ImageTextBatch):
            raise TypeError(
                f"EmbeddingPlotCallback: validation batches must be ImageTextBatch, received {type(batch).__name__}"
            )
        take = min(len(batch), num_samples - count)
        pixels.append(batch.pixel_values[:take].detach().cpu())
        captions.extend(batch.captions[:take])
        has_labels = batch.labels.numel() == len(batch)
        labels.append(batch.labels[:take].cpu() if has_labels else torch.full((take,), -1, dtype=torch.long))
        count += take
        if count >= num_samples:
            break
    if count < 2:
        raise ValueError(f"EmbeddingPlotCallback: the validation set must hold at least 2 samples, received {count}")
    return ImageTextBatch(torch.cat(pixels), captions, torch.cat(labels).long())


def _class_colors(labels: np.ndarray) -> dict[int, Any]:
    """One colour per label value; -1 (no class) is grey."""
    from matplotlib import colormaps

    classes = sorted(int(c) for c in np.unique(labels) if c >= 0)
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "viridis"]
    colors: dict[int, Any] = {-1: (0.6, 0.6, 0.6, 1.0)}
    for i, c in enumerate(classes):
        colors[c] = cmap(i if len(classes) <= 20 else i / max(1, len(classes) - 1))
    return colors


def draw_embedding_figure(
    projections: dict[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    title: str = "",
    draw_pairs: bool = False,
) -> "Figure":
    """One panel per method. Each projection is [2N, 2]: rows [:N] images (circles), [N:] texts (crosses).

    Points are coloured by label; the legend names classes (from `class_names` when given) when at most
    20 classes appear. With `draw_pairs`, a thin line joins each image to its caption.
    """
    from matplotlib.lines import Line2D

    n = int(labels.shape[0])
    fig, axes = new_figure(ncols=len(projections), panel_size=(5.5, 4.5))
    colors = _class_colors(labels)
    point_colors = [colors[int(c)] for c in labels]
    for ax, (method, xy) in zip(axes, projections.items()):
        if xy.shape != (2 * n, 2):
            raise ValueError(f"draw_embedding_figure: projection {method!r} must be [{2 * n}, 2], received {xy.shape}")
        img, txt = xy[:n], xy[n:]  # [N, 2] each
        if draw_pairs:
            for (x0, y0), (x1, y1) in zip(img, txt):
                ax.plot([x0, x1], [y0, y1], color="0.8", linewidth=0.4, zorder=0)
        ax.scatter(img[:, 0], img[:, 1], c=point_colors, marker="o", s=18, alpha=0.8, linewidths=0)
        ax.scatter(txt[:, 0], txt[:, 1], c=point_colors, marker="x", s=24, alpha=0.9, linewidths=1.0)
        ax.set_title(method.upper())
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Line2D([], [], marker="o", linestyle="", color="0.2", label="image"),
        Line2D([], [], marker="x", linestyle="", color="0.2", label="text"),
    ]
    class_ids = [c for c in colors if c >= 0]
    if len(class_ids) <= 20:
        for c in class_ids:
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            handles.append(Line2D([], [], marker="s", linestyle="", color=colors[c], label=str(name)))
    if -1 in set(labels.tolist()):
        handles.append(Line2D([], [], marker="s", linestyle="", color=colors[-1], label="no class"))
    axes[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    return fig


class EmbeddingPlotCallback(Callback):
    """Every `every_n_epochs` validation epochs, plot a fixed validation subset's image and text embeddings.

    The subset is the first `num_samples` samples of the validation dataloader, collected once and cached.
    Image and text embeddings are projected jointly ([2N, D] -> [2N, 2]) with each method, drawn in one
    figure (one panel per method), saved to `<run_dir>/plots/<filename>_epoch{E:03d}.png` and logged to
    TensorBoard / WandB (tag `plots/<filename>`). Plots after the validation of epochs E (0-based) with
    (E + 1) % every_n_epochs == 0, on global rank zero only, never during the sanity check. The global
    RNGs are left untouched (work runs inside `isolate_rng`), so plotting does not change training.
    Under sharded strategies (FSDP) the module's embed methods must work on rank zero alone.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 256,
        methods: Sequence[str] = ("pca", "tsne"),
        seed: int = 0,
        filename: str = "embeddings",
        draw_pairs: bool = False,
        embed_batch_size: int = 128,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("every_n_epochs", every_n_epochs, 1),
            ("num_samples", num_samples, 2),
            ("embed_batch_size", embed_batch_size, 1),
        ):
            check_positive_int(name, value, minimum=low)
        if isinstance(methods, str) or not isinstance(methods, Sequence) or len(methods) == 0:
            raise ValueError(f"EmbeddingPlotCallback: methods must be a non-empty list of names, received {methods!r}")
        unknown = [m for m in methods if m not in PROJECTIONS]
        if unknown:
            raise ValueError(
                f"EmbeddingPlotCallback: methods must be drawn from {sorted(PROJECTIONS)}, received unknown {unknown}"
            )
        if not isinstance(filename, str) or not filename or "/" in filename or "\\" in filename:
            raise ValueError(f"EmbeddingPlotCallback: filename must be a non-empty name without '/', received {filename!r}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.methods = list(dict.fromkeys(methods))
        self.seed = seed
        self.filename = filename
        self.draw_pairs = draw_pairs
        self.embed_batch_size = embed_batch_size
        self.written: list[Path] = []
        self._subset: ImageTextBatch | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        plots_dir = run_dir(trainer) / "plots"  # every rank: trainer.log_dir broadcasts
        if not trainer.is_global_zero:
            return
        with isolate_rng():
            self.plot(trainer, pl_module, plots_dir)

    def plot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, plots_dir: Path) -> Path:
        """Embed the cached subset, project, draw, save the PNG and log it; returns the PNG path."""
        for method in ("embed_images", "embed_texts"):
            if not callable(getattr(pl_module, method, None)):
                raise TypeError(f"EmbeddingPlotCallback: {type(pl_module).__name__} must define {method}()")
        if self._subset is None:
            self._subset = collect_fixed_subset(self._val_batches(trainer), self.num_samples)
        img, txt = self._embed(pl_module, self._subset)  # [N, D] each
        joint = np.concatenate([img, txt], axis=0)  # [2N, D]
        projections = {m: project_2d(joint, m, self.seed) for m in self.methods}
        datamodule = getattr(trainer, "datamodule", None)
        class_names = getattr(datamodule, "class_names", None)
        epoch = trainer.current_epoch
        fig = draw_embedding_figure(
            projections,
            self._subset.labels.numpy(),
            class_names=class_names,
            title=f"epoch {epoch}, step {trainer.global_step}: {len(self._subset)} image/text pairs",
            draw_pairs=self.draw_pairs,
        )
        path = save_png_atomic(fig, plots_dir / f"{self.filename}_epoch{epoch:03d}.png")
        log_figure(trainer, f"plots/{self.filename}", fig, png_path=path)
        if path not in self.written:
            self.written.append(path)
        return path

    @staticmethod
    def _val_batches(trainer: pl.Trainer) -> Iterable[Any]:
        """The raw validation dataloader: the datamodule's (no distributed sampler), else the trainer's."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and is_overridden("val_dataloader", datamodule):
            loaders: Any = datamodule.val_dataloader()
        else:
            loaders = trainer.val_dataloaders
        if isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        elif isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            raise RuntimeError("EmbeddingPlotCallback: the trainer has no validation dataloader to plot from")
        return loaders

    def _embed(self, pl_module: pl.LightningModule, subset: ImageTextBatch) -> tuple[np.ndarray, np.ndarray]:
        """Image and text embeddings [N, D] each, in eval mode without gradients; module modes restored."""
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        try:
            img_parts, txt_parts = [], []
            with torch.no_grad():
                for start in range(0, len(subset), self.embed_batch_size):
                    stop = start + self.embed_batch_size
                    pixels = subset.pixel_values[start:stop].to(pl_module.device)
                    img_parts.append(pl_module.embed_images(pixels).float().cpu())  # [b, D]
                    txt_parts.append(pl_module.embed_texts(list(subset.captions[start:stop])).float().cpu())
        finally:
            for module, mode in modes.items():
                module.training = mode
        img, txt = torch.cat(img_parts), torch.cat(txt_parts)
        if img.ndim != 2 or img.shape != txt.shape:
            raise ValueError(
                "EmbeddingPlotCallback: embed_images and embed_texts must return [N, D] of the same shape, "
                f"received {tuple(img.shape)} and {tuple(txt.shape)}"
            )
        return img.numpy(), txt.numpy()
