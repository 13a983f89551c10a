"""PNG figures saved next to a model: learning curves, confusion matrix, sample outputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.patches
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: dict[str, list[float]], path: Path, phase_starts=()) -> None:
    """Loss and every other metric against epoch, train and validation side by side."""
    names = [key for key in history if not key.startswith("val_") and key != "learning_rate"]
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    epochs = np.arange(1, len(history[names[0]]) + 1)
    for axis, name in zip(axes[0], names, strict=True):
        axis.plot(epochs, history[name], "o-", label="train")
        if f"val_{name}" in history:
            axis.plot(epochs, history[f"val_{name}"], "o-", label="validation")
        for start in phase_starts:
            axis.axvline(start + 0.5, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.set_title(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def confusion(matrix: np.ndarray, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (each true class sums to 1), counts annotated."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.6 * len(class_names))
    figure, axis = plt.subplots(figsize=(size + 1.5, size))
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if rates[row, column] > 0.5 else "black"
        axis.text(column, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def segmentation_samples(
    images: np.ndarray,
    masks: np.ndarray,
    predictions: np.ndarray,
    class_names: list[str],
    path: Path,
) -> None:
    """One row per scene: the image, the true mask over it, the predicted mask over it."""
    colours = plt.get_cmap("tab20", 20)(np.arange(len(class_names)))[:, :3]
    colours[0] = 0  # background stays clear in the overlay
    rows = len(images)
    figure, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for row, (image, mask, predicted) in enumerate(zip(images, masks, predictions, strict=True)):
        for column, (title, shown) in enumerate(
            (("image", None), ("truth", mask), ("prediction", predicted))
        ):
            axis = axes[row, column]
            pixels = image / 255.0
            if shown is not None:
                item = (shown > 0)[..., np.newaxis]
                pixels = np.where(item, 0.4 * pixels + 0.6 * colours[shown], 0.6 * pixels)
            axis.imshow(pixels)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title)
    handles = [
        matplotlib.patches.Patch(color=colours[index], label=name)
        for index, name in enumerate(class_names)
        if index > 0
    ]
    figure.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.06 if rows > 2 else 0.12, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def caption_samples(
    images: np.ndarray, generated: list[str], references: list[str], path: Path
) -> None:
    """A grid of scenes, each titled with the model's caption and one reference below it."""
    columns = 4
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.4 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, image, caption, reference in zip(
        axes.ravel(), images, generated, references, strict=False
    ):
        axis.imshow(image)
        axis.set_title(_wrap(caption), fontsize=9, loc="left")
        axis.annotate(
            "ref: " + _wrap(reference), (0, -0.02), xycoords="axes fraction",
            va="top", fontsize=8, color="dimgrey",
        )  # fmt: skip
    figure.tight_layout(h_pad=3.0)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _wrap(text: str, width: int = 40) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text.replace(" ,", ","), width))


def denoising_samples(images: dict[str, np.ndarray], path: Path, crop: int = 192) -> None:
    """The same crop of a clean photo, its noisy copy and each denoiser's output,
    side by side (images in [0, 1]), each titled with its PSNR against the clean one."""
    clean = images["clean"]
    top, left = max(0, (clean.shape[0] - crop) // 3), max(0, (clean.shape[1] - crop) // 2)
    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, (name, image) in zip(axes.ravel(), images.items(), strict=False):
        image = np.clip(image, 0.0, 1.0)
        error = np.mean((image - clean) ** 2)
        title = name if name == "clean" else f"{name}\n{-10 * np.log10(max(error, 1e-10)):.2f} dB"
        axis.imshow(image[top : top + crop, left : left + crop], cmap="gray", vmin=0, vmax=1)
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def sample_grid(images: np.ndarray, class_names: list[str], path: Path) -> None:
    """Generated uint8 images [n, h, w, c], n a multiple of the classes and grouped by
    class, as one row per class labelled with its name."""
    per_class = len(images) // len(class_names)
    height, width, channels = images.shape[1:]
    rows = images.reshape(len(class_names), per_class, height, width, channels)
    mosaic = rows.transpose(0, 2, 1, 3, 4).reshape(len(class_names) * height, -1, channels)
    figure, axis = plt.subplots(figsize=(0.5 * per_class + 1.4, 0.5 * len(class_names)))
    axis.imshow(mosaic.squeeze(-1) if channels == 1 else mosaic, cmap="gray", vmin=0, vmax=255)
    axis.set_yticks((np.arange(len(class_names)) + 0.5) * height, class_names, fontsize=8)
    axis.set_xticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
