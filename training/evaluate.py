"""Task metrics: classification, segmentation, captioning (BLEU), denoising (PSNR, SSIM)
and generation (Fréchet distance)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def classification_report(
    labels: np.ndarray, predictions: np.ndarray, class_names: list[str]
) -> dict:
    """Accuracy, per-class precision/recall/F1 (support too), macro F1, confusion matrix."""
    matrix = confusion_matrix(labels, predictions, len(class_names))
    true_positives = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(
        true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0
    )
    recall = np.divide(true_positives, actual, out=np.zeros_like(true_positives), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    per_class = {
        name: {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "f1": round(float(f), 4),
            "support": int(s),
        }
        for name, p, r, f, s in zip(class_names, precision, recall, f1, actual, strict=True)
    }
    present = actual > 0
    return {
        "accuracy": round(float(true_positives.sum() / max(len(labels), 1)), 4),
        "macro_f1": round(float(f1[present].mean()) if present.any() else 0.0, 4),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def segmentation_report(matrix: np.ndarray, class_names: list[str]) -> dict:
    """Pixel accuracy, per-class IoU and mean IoU from a pixel confusion matrix.

    The mean is over the classes present in the truth or the predictions.
    """
    true_positives = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positives
    iou = np.divide(true_positives, union, out=np.zeros_like(true_positives), where=union > 0)
    present = union > 0
    return {
        "pixel_accuracy": round(float(true_positives.sum() / max(matrix.sum(), 1)), 4),
        "mean_iou": round(float(iou[present].mean()) if present.any() else 0.0, 4),
        "per_class_iou": {
            name: round(float(value), 4)
            for name, value, seen in zip(class_names, iou, present, strict=True)
            if seen
        },
        "pixels": int(matrix.sum()),
    }


def bleu_scores(references: list[list[list[str]]], hypotheses: list[list[str]]) -> dict:
    """Corpus BLEU-1..4 (Papineni et al. 2002) of tokenised hypotheses, each against all
    of its references, as nltk computes it."""
    from nltk.translate import bleu_score

    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    scores = bleu_score.corpus_bleu(references, hypotheses, weights=weights)
    return {f"bleu_{n}": float(score) for n, score in enumerate(scores, start=1)}


def image_quality(clean: np.ndarray, denoised: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of an image in [0, 1] against its clean original.

    SSIM is scikit-image's (7x7 window, per channel, averaged); the denoised image
    is clipped to [0, 1] first, as any image file would be.
    """
    import skimage.metrics

    denoised = np.clip(denoised, 0.0, 1.0)
    channel_axis = -1 if clean.ndim == 3 else None
    return {
        "psnr": float(skimage.metrics.peak_signal_noise_ratio(clean, denoised, data_range=1.0)),
        "ssim": float(
            skimage.metrics.structural_similarity(
                clean, denoised, data_range=1.0, channel_axis=channel_axis
            )
        ),
    }


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set [n, d], what the Fréchet distance compares."""
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(statistics_a: tuple, statistics_b: tuple) -> float:
    """Fréchet distance between two Gaussians (mean, covariance) fitted to feature sets
    (Heusel et al. 2017): |mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a S_b)^½). With
    Inception features this is FID; Kerve's generators use a fashion classifier's
    (FID-F)."""
    import scipy.linalg

    (mean_a, cov_a), (mean_b, cov_b) = statistics_a, statistics_b
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):  # round-off gives tiny imaginary parts
        root = root.real
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2.0 * root)
    return float(max(distance, 0.0))
