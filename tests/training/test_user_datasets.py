"""The training scripts on a user's own data, one layout at a time, end to end: a tiny data
set written in the layout, one short run, the version published and served. Then one
broken data set per kind of mistake, refused before training with the file named.

One model per layout is trained once (module fixtures) and shared by its tests. What
keeps the runs short is tracing less, not training less: phase 1 only, on the frozen
ImageNet Lite0 (converted from the installed PyPI package, no download), whose backward
pass stops at the new layers (the captioner then trains on cached features); and the
service warms up one batch size, not five.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kerve_manifest
from service.settings import BatchingOverride
from tests.helpers import encode, make_settings, start_client, wait_ready, write_colour_folders
from training import captioner, classifier, gan, segmenter
from training.data import caption_sets, segmentation_sets, splits
from training.data.image_files import DataError

SHAPES = ["background", "square", "disc"]
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}
BACKGROUNDS = {"dark": 30, "bright": 225}


# -- tiny data sets --------------------------------------------------------------------------
def shapes_scene(rng: np.random.Generator, width: int, height: int, disc_class: int):
    """(RGB image, class mask): a square (class 1) and a disc with a 1-pixel ring of 255
    (a VOC-style boundary, to be ignored), on a noisy background."""
    image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    image[y : y + 12, x : x + 12] = (230, 200, 40)
    mask[y : y + 12, x : x + 12] = 1
    cy, cx = int(rng.integers(8, height - 8)), int(rng.integers(8, width - 8))
    distance = np.hypot(*np.ogrid[-cy : height - cy, -cx : width - cx])
    image[distance <= 6] = (60, 120, 240)
    mask[(distance > 6) & (distance <= 7)] = 255
    mask[distance <= 6] = disc_class
    return image, mask


def palette_png(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask, "P")
    image.putpalette([value for i in range(256) for value in (i * 7 % 256, i * 3 % 256, i)])
    image.save(path)


def write_images_masks(root: Path, count: int = 12) -> Path:
    """images/ (JPEG and PNG, two sizes) + masks/ (palette and grey PNGs) + labels.txt."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "labels.txt").write_text("\n".join(SHAPES) + "\n")
    for index in range(count):
        width, height = (40, 32) if index % 2 else (48, 36)
        image, mask = shapes_scene(rng, width, height, disc_class=2)
        suffix = "jpg" if index % 2 else "png"
        Image.fromarray(image).save(root / "images" / f"shot{index:02d}.{suffix}")
        if index % 2:
            palette_png(mask, root / "masks" / f"shot{index:02d}.png")
        else:
            Image.fromarray(mask, "L").save(root / "masks" / f"shot{index:02d}.png")
    return root


def write_voc(root: Path, count: int = 12) -> Path:
    """VOCdevkit/VOC2012 with train/val lists (no test list), palette masks using VOC's
    class indices (cat 8, person 15), and two detection-only images without masks."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    rng = np.random.default_rng(1)
    stems = [f"2012_{index:06d}" for index in range(count + 2)]
    for index, stem in enumerate(stems):
        image, mask = shapes_scene(rng, 44, 36, disc_class=15)
        mask[mask == 1] = 8
        Image.fromarray(image).save(voc / "JPEGImages" / f"{stem}.jpg")
        if index < count:
            palette_png(mask, voc / "SegmentationClass" / f"{stem}.png")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(stems[:8]) + "\n")
    (lists / "val.txt").write_text("\n".join(stems[8:count]) + "\n")
    return root


def caption_images(root: Path, count: int = 12) -> dict[str, list[str]]:
    """images/*.jpg of a coloured square on a dark or bright ground; {name: captions}."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    found = {}
    for index in range(count):
        colour, ground = list(COLOURS)[index % 3], list(BACKGROUNDS)[index // 3 % 2]
        image = np.full((30, 36, 3), BACKGROUNDS[ground], np.uint8)
        x, y = int(rng.integers(0, 20)), int(rng.integers(0, 14))
        image[y : y + 14, x : x + 14] = COLOURS[colour]
        name = f"photo_{index:02d}.jpg"
        Image.fromarray(image).save(root / "images" / name)
        found[name] = [f"A {colour} square on a {ground} background.",
                       f"{colour.title()} square, {ground} ground"]  # fmt: skip
    return found


def write_captions_csv(root: Path) -> Path:
    rows = caption_images(root)
    with open(root / "captions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption"])
        for name, texts in rows.items():
            writer.writerows([name, text] for text in texts)  # the comma: quoted
    return root


def write_flickr8k(root: Path) -> Path:
    """The Flickr8k text files, including the archive's quirk: a captioned image that is
    in no split list and not among the images."""
    rows = caption_images(root)
    names = list(rows)
    lines = [f"{name}#{n}\t{text}" for name, texts in rows.items() for n, text in enumerate(texts)]
    lines.append("2258277193_586949ec62.jpg.1#0\tA dog runs .")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for part, chosen in (("train", names[:8]), ("dev", names[8:10]), ("test", names[10:])):
        (root / f"Flickr_8k.{part}Images.txt").write_text("\n".join(chosen) + "\n")
    return root


def write_coco(root: Path) -> Path:
    rows = caption_images(root)
    images = [{"id": 100 + i, "file_name": name} for i, name in enumerate(rows)]
    annotations = [
        {"id": 1000 + 10 * i + n, "image_id": 100 + i, "caption": text}
        for i, texts in enumerate(rows.values())
        for n, text in enumerate(texts)
    ]
    document = {"info": {}, "images": images, "annotations": annotations}
    (root / "captions_train2017.json").write_text(json.dumps(document, indent=1))
    return root


# -- the scripts, one short run each -------------------------------------------------------
FROZEN_RUN = ["--weights", "imagenet", "--head-epochs", "1", "--epochs", "0", "--verbose", "0"]
SEGMENTER_RUN = [*FROZEN_RUN, "--image-size", "32", "--batch-size", "4"]
CAPTIONER_RUN = [*FROZEN_RUN, "--image-size", "32", "--units", "8", "--embedding-dim", "4",
                 "--context-dim", "8", "--max-length", "10", "--batch-size", "16"]  # fmt: skip


def train_segmenter(tmp_path_factory, writer) -> Path:
    root = tmp_path_factory.mktemp("segmentation")
    data = writer(root / "data")
    return segmenter.main(
        ["--data", str(data), *SEGMENTER_RUN, "--out", str(root / "models" / "segmenter")]
    )


def train_captioner(tmp_path_factory, writer) -> Path:
    root = tmp_path_factory.mktemp("captioning")
    data = writer(root / "data")
    return captioner.main(
        ["--data", str(data), *CAPTIONER_RUN, "--out", str(root / "models" / "captioner")]
    )


@pytest.fixture(scope="module")
def images_masks_version(tmp_path_factory) -> Path:
    return train_segmenter(tmp_path_factory, write_images_masks)


@pytest.fixture(scope="module")
def voc_version(tmp_path_factory) -> Path:
    return train_segmenter(tmp_path_factory, write_voc)


@pytest.fixture(scope="module", params=["csv", "flickr8k", "coco"])
def caption_version(request, tmp_path_factory) -> tuple[str, Path]:
    writer = {"csv": write_captions_csv, "flickr8k": write_flickr8k, "coco": write_coco}
    return request.param, train_captioner(tmp_path_factory, writer[request.param])


def serve(version: Path, path: str, **request):
    """POST to ``path`` on a service started on the version's repository."""
    one_size = BatchingOverride(max_batch_size=1, max_delay_ms=2)
    with start_client(make_settings(version.parents[1], batching=one_size)) as client:
        wait_ready(client)
        return client.post(path, **request)


def png_body(image: np.ndarray) -> dict:
    return {"content": encode(image, "PNG"), "headers": {"Content-Type": "image/png"}}


# -- segmentation ----------------------------------------------------------------------------
def test_images_masks_layout_trains_publishes_and_serves(images_masks_version):
    manifest = kerve_manifest.read_manifest(images_masks_version)
    assert manifest.task == "segmentation" and manifest.labels == SHAPES  # from labels.txt
    provenance = manifest.provenance
    assert provenance["layout"] == "images-masks" and provenance["ignore_index"] == 255
    assert sum(provenance["images"].values()) == 12 and min(provenance["images"].values()) >= 1
    assert provenance["split"].startswith("seeded 70/15/15")
    # measured at each test image's own size, ring pixels (255) left out
    matrix = np.array(manifest.metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and 0 < matrix.sum() < provenance["images"]["test"] * 48 * 36
    assert 0.0 <= manifest.metrics["test_mean_iou"] <= 1.0
    for artifact in ("learning_curves.png", "test_samples.png", "history.csv"):
        assert (images_masks_version / artifact).stat().st_size > 0

    image, _ = shapes_scene(np.random.default_rng(9), 50, 40, disc_class=2)
    response = serve(images_masks_version, "/v1/segment", **png_body(image))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"] == SHAPES and (body["width"], body["height"]) == (50, 40)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]["b64"]))))
    assert mask.shape == (40, 50) and mask.max() < len(SHAPES)


def test_voc_layout_trains_publishes_and_serves(voc_version):
    manifest = kerve_manifest.read_manifest(voc_version)
    assert manifest.labels == segmentation_sets.VOC_CLASSES  # no labels.txt: VOC's 21
    provenance = manifest.provenance
    assert provenance["layout"] == "voc"
    # no test list: val.txt (4) is the test split, validation comes out of train.txt (8)
    assert provenance["images"] == {"train": 7, "val": 1, "test": 4}
    assert "test = the val list" in provenance["split"]
    assert len(manifest.metrics["confusion_matrix"]) == 21

    image, _ = shapes_scene(np.random.default_rng(9), 44, 36, disc_class=15)
    response = serve(voc_version, "/v1/segment", **png_body(image))
    assert response.status_code == 200, response.text
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["mask"]["b64"]))))
    assert mask.shape == (36, 44) and mask.max() < 21


def test_segmentation_split_is_seeded_and_independent_of_listing_order(tmp_path):
    data = write_images_masks(tmp_path / "data", count=20)
    first = segmentation_sets.load(data, seed=4)
    again = segmentation_sets.load(data, seed=4)
    assert first.splits == again.splits
    stems = {name: [pair.stem for pair in pairs] for name, pairs in first.splits.items()}
    assert sorted(sum(stems.values(), [])) == [f"shot{i:02d}" for i in range(20)]
    assert [len(stems[name]) for name in ("train", "val", "test")] == [14, 3, 3]
    names = sum(stems.values(), [])
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(20)]
    assert splits.split_names(shuffled, seed=4) == [stems[n] for n in ("train", "val", "test")]
    assert segmentation_sets.load(data, seed=5).splits != first.splits


def test_masks_are_read_by_nearest_neighbour_keeping_the_ignore_index(tmp_path):
    data = write_images_masks(tmp_path / "data", count=3)
    arrays = segmentation_sets.read_arrays(segmentation_sets.load(data), 32)
    masks = np.concatenate([part.masks for part in arrays.values()])
    assert masks.shape == (3, 32, 32) and set(np.unique(masks)) <= {0, 1, 2, 255}
    assert {1, 2} <= set(np.unique(masks))


def broken_images_masks(tmp_path: Path) -> Path:
    return write_images_masks(tmp_path / "data", count=4)


def segmenter_error(data: Path, *extra: str) -> str:
    """The message the script refuses ``data`` with (before building a model)."""
    with pytest.raises(DataError) as caught:
        segmenter.main(["--data", str(data), *SEGMENTER_RUN, *extra,
                        "--out", str(data.parent / "models" / "segmenter")])  # fmt: skip
    assert not (data.parent / "models").exists()
    return str(caught.value)


def test_refuses_an_image_without_a_mask(tmp_path):
    data = broken_images_masks(tmp_path)
    (data / "masks" / "shot01.png").unlink()
    message = segmenter_error(data)
    assert str(data / "images" / "shot01.jpg") in message and "without a mask" in message


def test_refuses_a_mask_without_an_image(tmp_path):
    data = broken_images_masks(tmp_path)
    (data / "images" / "shot02.png").unlink()
    message = segmenter_error(data)
    assert str(data / "masks" / "shot02.png") in message and "without an image" in message


def test_refuses_a_mask_of_another_size(tmp_path):
    data = broken_images_masks(tmp_path)
    Image.fromarray(np.zeros((30, 30), np.uint8), "L").save(data / "masks" / "shot03.png")
    message = segmenter_error(data)
    assert f"{data / 'masks' / 'shot03.png'}: is 30x30 but its image shot03.jpg is 40x32" in (
        message
    )


def test_refuses_class_indices_outside_the_labels(tmp_path):
    data = broken_images_masks(tmp_path)
    mask = np.zeros((36, 48), np.uint8)
    mask[:4, :4] = 7
    Image.fromarray(mask, "L").save(data / "masks" / "shot00.png")
    message = segmenter_error(data)
    assert f"{data / 'masks' / 'shot00.png'}: class indices 7 are outside the 3 labels" in message
    # an index at --ignore-index is no class but allowed: then the same mask passes
    # (and 255, the rings round the discs, is the one outside the labels)
    ignoring_seven = segmentation_sets.load(data, ignore_index=7)
    with pytest.raises(DataError, match="class indices 255 are outside") as caught:
        segmentation_sets.read_arrays(ignoring_seven, 32)
    assert "shot00" not in str(caught.value)


def test_refuses_an_unreadable_image_and_a_mask_that_is_not_class_indices(tmp_path):
    data = broken_images_masks(tmp_path)
    (data / "images" / "shot01.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    Image.new("RGB", (48, 36)).save(data / "masks" / "shot02.png")
    message = segmenter_error(data)
    assert f"{data / 'images' / 'shot01.jpg'}: cannot read the image" in message
    assert f"{data / 'masks' / 'shot02.png'}: a mask must be a palette (P) or grey (L)" in message
    assert message.startswith(f"segmentation data set {data} (images-masks): 2 problems")


@pytest.mark.parametrize("content", [None, "\n\n"])
def test_refuses_a_missing_or_empty_labels_file(tmp_path, content):
    data = broken_images_masks(tmp_path)
    if content is None:
        (data / "labels.txt").unlink()
    else:
        (data / "labels.txt").write_text(content)
    message = segmenter_error(data)
    assert str(data / "labels.txt") in message
    assert ("missing" if content is None else "is empty") in message


def test_refuses_a_split_list_naming_a_missing_file(tmp_path):
    data = write_voc(tmp_path / "data")
    lists = data / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "val.txt").write_text("2012_000008\n2012_000099\n")
    message = segmenter_error(data)
    assert f"{lists / 'val.txt'}: line 2 names '2012_000099'" in message
    assert "2012_000008" not in message


# -- captioning ------------------------------------------------------------------------------
def test_caption_layout_trains_publishes_and_serves(caption_version):
    layout, version = caption_version
    manifest = kerve_manifest.read_manifest(version)
    assert manifest.task == "captioning" and manifest.provenance["format"] == layout
    vocabulary = manifest.text.vocabulary
    assert vocabulary[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    # normalised: lower case, no punctuation; built from the training captions only
    assert {"square", "red", "dark", "background"} <= set(vocabulary)
    assert not {"Red", "background.", ",", "ground,"} & set(vocabulary)
    assert {"test_bleu_1", "test_bleu_4", "val_bleu_4"} <= manifest.metrics.keys()
    assert "test_fact_accuracy" not in manifest.metrics  # only the scenes have facts
    images = manifest.provenance["images"]
    if layout == "flickr8k":  # the lists, and the quirk left out
        assert images == {"train": 8, "val": 2, "test": 2}
        assert "left out (2258277193_586949ec62.jpg.1)" in manifest.provenance["split"]
    else:
        assert sum(images.values()) == 12
        assert manifest.provenance["captions"] == {k: 2 * v for k, v in images.items()}

    image = np.full((30, 36, 3), 30, np.uint8)
    image[5:19, 5:19] = COLOURS["green"]
    response = serve(version, "/v1/caption?beam_size=2", **png_body(image))
    assert response.status_code == 200, response.text
    (caption,) = response.json()["captions"]
    assert set(caption["caption"].split()) <= set(vocabulary[4:])


def test_captions_are_normalised_and_the_vocabulary_comes_from_training():
    assert caption_sets.normalise("A dog\u2019s T-shirt, (RED)...  ok!") == "a dog's t-shirt red ok"
    assert caption_sets.normalise(" ... ") == ""
    train = ["a red square", "a red disc", "a blue square"]
    assert caption_sets.build_vocabulary(train)[4:] == ["a", "blue", "disc", "red", "square"]
    assert caption_sets.build_vocabulary(train, min_count=2)[4:] == ["a", "red", "square"]
    assert caption_sets.build_vocabulary(train, max_words=2)[4:] == ["a", "red"]


def test_caption_split_is_by_image_and_seeded(tmp_path):
    data = write_captions_csv(tmp_path / "data")
    first = caption_sets.load(data, seed=3)
    assert first.splits == caption_sets.load(data, seed=3).splits
    names = sum(first.splits.values(), [])
    assert sorted(names) == sorted(set(names)) and len(names) == 12  # each image once
    assert first.references("test") == [first.captions[n] for n in first.splits["test"]]
    assert all(len(refs) == 2 for refs in first.references("test"))


def caption_error(data: Path) -> str:
    with pytest.raises(DataError) as caught:
        captioner.main(["--data", str(data), *CAPTIONER_RUN,
                        "--out", str(data.parent / "models" / "captioner")])  # fmt: skip
    assert not (data.parent / "models").exists()
    return str(caught.value)


def rewrite_csv(data: Path, rows: list[list[str]]) -> None:
    with open(data / "captions.csv", "w", newline="") as file:
        csv.writer(file).writerows([["image", "caption"], *rows])


def test_refuses_a_caption_naming_a_missing_image(tmp_path):
    data = write_captions_csv(tmp_path / "data")
    (data / "images" / "photo_03.jpg").unlink()
    message = caption_error(data)
    assert f"{data / 'captions.csv'}: line 8: names photo_03.jpg, which is not in" in message


def test_refuses_an_image_with_no_caption(tmp_path):
    data = write_captions_csv(tmp_path / "data")
    Image.new("RGB", (8, 8)).save(data / "images" / "extra.png")
    message = caption_error(data)
    assert f"{data / 'images' / 'extra.png'}: an image with no caption" in message


def test_refuses_an_empty_caption_and_a_malformed_row(tmp_path):
    data = write_captions_csv(tmp_path / "data")
    rows = [[name, "a red square"] for name in sorted(p.name for p in (data / "images").iterdir())]
    rows[2][1] = " ?! "
    rows[5].append("an extra field")
    rewrite_csv(data, rows)
    message = caption_error(data)
    assert f"{data / 'captions.csv'}: line 4: empty caption for photo_02.jpg" in message
    assert f"{data / 'captions.csv'}: line 7: 3 fields, expected 2" in message


def test_refuses_an_unreadable_image(tmp_path):
    data = write_captions_csv(tmp_path / "data")
    (data / "images" / "photo_07.jpg").write_bytes(b"GIF89a truncated")
    message = caption_error(data)
    assert f"{data / 'images' / 'photo_07.jpg'}: cannot read the image" in message


def test_refuses_a_malformed_token_line(tmp_path):
    data = write_flickr8k(tmp_path / "data")
    lines = (data / "Flickr8k.token.txt").read_text().splitlines()
    lines[4] = lines[4].replace("\t", " ")
    (data / "Flickr8k.token.txt").write_text("\n".join(lines))
    message = caption_error(data)
    assert f"{data / 'Flickr8k.token.txt'}: line 5: expected '<image>#<n><TAB><caption>'" in (
        message
    )


def test_refuses_malformed_json_and_unknown_image_ids(tmp_path):
    data = write_coco(tmp_path / "data")
    path = data / "captions_train2017.json"
    text = path.read_text()
    path.write_text(text.replace('"annotations": [', '"annotations": [,', 1))
    line = text[: text.index('"annotations"')].count("\n") + 1
    assert re.search(rf"{re.escape(str(path))}: line {line} column \d+: malformed JSON",
                     caption_error(data))  # fmt: skip
    document = json.loads(text)
    document["annotations"][3]["image_id"] = 999
    path.write_text(json.dumps(document))
    assert f"{path}: annotations[3]: image_id 999 is not among the 'images'" in caption_error(data)


def test_refuses_a_folder_with_no_captions_file(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    message = caption_error(tmp_path / "data")
    assert f"{tmp_path / 'data'}: no captions found" in message


# -- class folders (the classifier and the GAN) ------------------------------------------------
def test_class_folders_train_a_classifier_that_serves(tmp_path):
    data = write_colour_folders(tmp_path / "data", per_class=8)
    version = classifier.main(
        ["--data", str(data), *FROZEN_RUN, "--image-size", "32", "--batch-size", "8",
         "--out", str(tmp_path / "models" / "colours")]
    )  # fmt: skip
    manifest = kerve_manifest.read_manifest(version)
    assert manifest.labels == sorted(COLOURS)  # the folder names, sorted
    assert manifest.provenance["split_sizes"] == {"train": 18, "val": 3, "test": 3}
    pixels = np.zeros((20, 20, 3), np.uint8)
    pixels[..., 2] = 230
    response = serve(version, "/v1/classify?top_k=3", **png_body(pixels))
    assert response.status_code == 200, response.text
    (predictions,) = response.json()["predictions"]
    assert sorted(p["label"] for p in predictions) == sorted(COLOURS)


def test_class_folders_train_a_generator_that_serves(tmp_path):
    data = write_colour_folders(tmp_path / "data", per_class=8)
    version = gan.main(
        ["--data", str(data), "--image-size", "12", "--width", "4", "--latent-dim", "8",
         "--epochs", "1", "--batch-size", "8", "--verbose", "0",
         "--out", str(tmp_path / "models" / "generator")]
    )  # fmt: skip
    manifest = kerve_manifest.read_manifest(version)
    assert manifest.task == "generation" and manifest.labels == sorted(COLOURS)
    response = serve(version, "/v1/generate", json={"label": "green", "count": 2, "seed": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == "green" and len(body["images"]) == 2
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["b64"])))
    assert (image.size, image.mode) == ((12, 12), "RGB")
