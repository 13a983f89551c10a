"""Train a CNN encoder + recurrent decoder to caption scenes, and publish it.

    python -m training.captioner --backbone efficientnet_lite0 --weights imagenet|none|PATH \\
        --decoder lstm|gru --image-size 96 --train-scenes N --out models/captioner
    python -m training.captioner --data DIR [--captions FILE] [--vocab-size N] \\
        [--min-count N] ...

"Show and Tell" (Vinyals et al. 2015) with the image fed at every step: the
pretrained encoder's last feature map is projected, flattened (so the decoder
knows where things are, which "to the left of" needs) and squeezed into an image
vector that sets the decoder's initial state and is added to every word's
embedding. Training uses teacher forcing and a cross-entropy masked past each
caption's end, on batches of captions of similar length.
While the backbone is frozen its features are computed once and cached, so the
decoder's epochs cost seconds; phase 2 (optional) fine-tunes the top of the
backbone on the images themselves. Captions come from training/data/captions.py
(the built-in scenes), or with ``--data DIR`` from the user's images and captions
(captions.csv, Flickr8k's token file or a COCO captions JSON: see
training/data/caption_sets.py), normalised, split by image and checked before training.
The vocabulary is built from the training captions only.

The published version is one ``model.keras`` holding two models the service
drives: ``encoder`` (image -> [image vector, *initial states]) and ``decoder``
(one step: [previous token, image vector, *states] -> [log-probabilities,
*states]). The vocabulary travels in the manifest's ``text`` section.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kerve_manifest  # noqa: E402
from training import backbones, evaluate, export, finetune, pipeline, plots  # noqa: E402
from training.data import caption_sets, captions, scenes  # noqa: E402
from training.data.image_files import DataError  # noqa: E402

PROJECTION_FILTERS = 64  # the backbone's feature map, squeezed before flattening
DECODERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
SAMPLE_SCENES = 8  # images in the sample-captions figure
FEATURE_BATCH = 128


# -- data ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionedScenes:
    images: np.ndarray  # uint8 [n, size, size, 3]
    references: list[list[str]]  # 3-5 captions per scene; a user's images: all of theirs
    facts: list[captions.Facts] | None  # what a scene's caption must say; None for user data


def make_scenes(split: str, count: int, image_size: int, seed: int) -> CaptionedScenes:
    generator = scenes.SceneGenerator(split, image_size, seed)
    rng = np.random.default_rng([seed, scenes.SPLITS.index(split), 1])  # the wordings
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    references, scene_facts = [], []
    for index in range(count):
        scene = generator.scene(index)
        images[index] = scene.image
        references.append(captions.describe(scene, rng))
        scene_facts.append(captions.facts(scene))
    return CaptionedScenes(images, references, scene_facts)


def load_user_data(args: argparse.Namespace):
    """({split: CaptionedScenes} of the images and captions in ``args.data``, the set)."""
    dataset = caption_sets.load(args.data, args.captions, args.seed)
    names = [name for split in dataset.splits.values() for name in split]
    images = caption_sets.read_images(dataset, names, args.image_size)  # all checked at once
    data, first = {}, 0
    for split, part in dataset.splits.items():
        data[split] = CaptionedScenes(
            images[first : first + len(part)], dataset.references(split), None
        )
        first += len(part)
    return data, dataset


def unknown_rate(references: list[list[str]], text: kerve_manifest.TextSpec) -> float:
    """The share of words the vocabulary maps to <unk>."""
    known = set(text.vocabulary)
    words = [word for refs in references for caption in refs for word in caption.split()]
    return sum(word not in known for word in words) / max(len(words), 1)


def encode_captions(
    texts: list[str], text: kerve_manifest.TextSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher forcing pairs: (<start> w1 .. wn, w1 .. wn <end>), padded to max_length + 1."""
    index = {token: number for number, token in enumerate(text.vocabulary)}
    unknown, length = index[text.unknown_token], text.max_length + 1
    inputs = np.full((len(texts), length), index[text.padding_token], np.int32)
    targets = inputs.copy()
    for row, caption in enumerate(texts):
        words = [index.get(word, unknown) for word in caption.split()][: text.max_length]
        inputs[row, : len(words) + 1] = [index[text.start_token], *words]
        targets[row, : len(words) + 1] = [*words, index[text.end_token]]
    return inputs, targets


def caption_pairs(
    data: CaptionedScenes, text: kerve_manifest.TextSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every reference as a training pair: (scene index, input tokens, target tokens)."""
    scene_index = np.array([i for i, refs in enumerate(data.references) for _ in refs])
    inputs, targets = encode_captions([r for refs in data.references for r in refs], text)
    return scene_index, inputs, targets


def normalise(images: np.ndarray, spec: backbones.Backbone) -> np.ndarray:
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    return (images.astype(np.float32) - mean) / std


def backbone_features(backbone: keras.Model, images: np.ndarray, spec) -> np.ndarray:
    """The frozen backbone's feature maps, computed once (float16 halves the cache)."""
    batches = [
        backbone.predict_on_batch(normalise(images[i : i + FEATURE_BATCH], spec))
        for i in range(0, len(images), FEATURE_BATCH)
    ]
    return np.concatenate(batches).astype(np.float16)


# -- model ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionModels:
    encoder: keras.Model  # image -> [image vector, *initial states]
    decoder: keras.Model  # one step, see the module docstring
    on_features: keras.Model  # [backbone features, input tokens] -> logits (phase 1)
    on_images: keras.Model  # [image, input tokens] -> logits (phase 2, from scratch)
    serving: keras.Model  # holds encoder and decoder in one file


def build_models(
    backbone: keras.Model,
    vocabulary_size: int,
    args: argparse.Namespace,
    pretrained: bool,
) -> CaptionModels:
    recurrent = DECODERS[args.decoder](
        args.units, return_sequences=True, return_state=True, name=args.decoder
    )
    num_states = 2 if args.decoder == "lstm" else 1
    image_head = build_image_head(backbone.output_shape[1:], args, num_states)
    embedding = keras.layers.Embedding(vocabulary_size, args.embedding_dim, name="embedding")
    to_logits = keras.layers.Dense(vocabulary_size, name="logits")

    image = keras.Input(backbone.input_shape[1:], name="image")
    # training=False keeps a pretrained backbone's BatchNorm in inference mode.
    features = backbone(image, training=False) if pretrained else backbone(image)
    encoder = keras.Model(image, image_head(features), name="encoder")

    inject = keras.layers.Dense(args.embedding_dim, name="inject")

    def step_inputs_of(tokens, context):
        """Each word's embedding plus the image vector (broadcast over the steps)."""
        image_word = keras.layers.Reshape((1, args.embedding_dim))(inject(context))
        return keras.layers.Add()([embedding(tokens), image_word])

    def sequence_logits(image_outputs, tokens):
        context, *states = image_outputs
        sequence = recurrent(step_inputs_of(tokens, context), initial_state=states)[0]
        return to_logits(keras.layers.Dropout(args.dropout)(sequence))

    # Any caption length: training batches are cut to their longest caption.
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    cached = keras.Input(backbone.output_shape[1:], name="backbone_features")
    on_features = keras.Model([cached, tokens], sequence_logits(image_head(cached), tokens))
    on_images = keras.Model([image, tokens], sequence_logits(encoder(image), tokens))

    token = keras.Input((1,), dtype="int32", name="token")
    context = keras.Input((args.context_dim,), name="context")
    states = [keras.Input((args.units,), name=f"state_{i}") for i in range(num_states)]
    output, *new_states = recurrent(step_inputs_of(token, context), initial_state=states)
    logits = to_logits(keras.layers.Reshape((args.units,))(output))
    log_probs = keras.layers.Activation("log_softmax", name="log_probs")(logits)
    decoder = keras.Model([token, context, *states], [log_probs, *new_states], name="decoder")

    step_inputs = [keras.Input(tensor.shape[1:], dtype=tensor.dtype) for tensor in decoder.inputs]
    serving = keras.Model(
        [image, *step_inputs], [*encoder(image), *decoder(step_inputs)], name="captioner"
    )
    return CaptionModels(encoder, decoder, on_features, on_images, serving)


def build_image_head(feature_shape, args: argparse.Namespace, num_states: int) -> keras.Model:
    """Feature map -> [image vector, *initial states], keeping where things are."""
    features = keras.Input(feature_shape, name="features")
    x = keras.layers.Conv2D(PROJECTION_FILTERS, 1, use_bias=False, name="project")(features)
    x = keras.layers.BatchNormalization(momentum=0.9, name="project_bn")(x)
    x = keras.layers.ReLU(name="project_relu")(x)
    x = keras.layers.Dropout(args.dropout)(keras.layers.Flatten()(x))
    context = keras.layers.Dense(args.context_dim, activation="relu", name="image_vector")(x)
    states = [
        keras.layers.Dense(args.units, activation="tanh", name=f"initial_state_{i}")(context)
        for i in range(num_states)
    ]
    return keras.Model(features, [context, *states], name="image_head")


# -- decoding and evaluation ---------------------------------------------------------------
def greedy_captions(
    models: CaptionModels, images: np.ndarray, spec, text: kerve_manifest.TextSpec
) -> list[str]:
    """Greedy decoding in batches, <pad>/<start>/<unk> never chosen."""
    banned = [text.index(t) for t in (text.padding_token, text.start_token, text.unknown_token)]
    end = text.index(text.end_token)
    num_states = len(models.decoder.outputs) - 1
    results = []
    for first in range(0, len(images), FEATURE_BATCH):
        encoded = models.encoder.predict_on_batch(
            normalise(images[first : first + FEATURE_BATCH], spec)
        )
        context, states = encoded[:-num_states], encoded[-num_states:]
        tokens = np.full((len(encoded[0]), 1), text.index(text.start_token), np.int32)
        words = np.full((len(tokens), text.max_length), end, np.int32)
        ended = np.zeros(len(tokens), bool)
        for step in range(text.max_length + 1):
            log_probs, *states = models.decoder.predict_on_batch([tokens, *context, *states])
            log_probs[:, banned] = -np.inf
            tokens = np.argmax(log_probs, axis=-1).astype(np.int32)[:, np.newaxis]
            ended |= tokens[:, 0] == end
            if ended.all() or step == text.max_length:
                break
            words[:, step] = np.where(ended, end, tokens[:, 0])
        for row in words:
            row = row[: np.argmax(row == end)] if (row == end).any() else row
            results.append(" ".join(text.vocabulary[t] for t in row))
    return results


def caption_report(hypotheses: list[str], data: CaptionedScenes) -> dict:
    """BLEU-1..4 against every reference, and (for scenes) how often the caption's facts
    are exact."""
    report = evaluate.bleu_scores([[r.split() for r in refs] for refs in data.references],
                                  [h.split() for h in hypotheses])  # fmt: skip
    if data.facts is None:
        return report
    items = [
        captions.item_counts(h) == dict(f.counts)
        for h, f in zip(hypotheses, data.facts, strict=True)
    ]
    backgrounds = [
        captions.background_kind(h) == f.background
        for h, f in zip(hypotheses, data.facts, strict=True)
    ]
    report["fact_accuracy"] = float(np.mean(items))
    report["background_accuracy"] = float(np.mean(backgrounds))
    report["all_facts_accuracy"] = float(np.mean(np.logical_and(items, backgrounds)))
    return report


# -- the run -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    started = time.perf_counter()
    spec = backbones.BACKBONES[args.backbone]
    user_set = None
    if args.data is None:
        counts = {"train": args.train_scenes, "val": args.val_scenes, "test": args.test_scenes}
        data = {
            split: make_scenes(split, n, args.image_size, args.seed) for split, n in counts.items()
        }
    else:
        data, user_set = load_user_data(args)
        counts = {split: len(part.images) for split, part in data.items()}
    text = kerve_manifest.TextSpec(
        vocabulary=caption_sets.build_vocabulary(
            [r for refs in data["train"].references for r in refs], args.vocab_size, args.min_count
        ),
        max_length=args.max_length,
    )
    source = "scenes" if user_set is None else f"{user_set.directory} ({user_set.format})"
    print(
        f"{source} at {args.image_size}px: "
        + ", ".join(f"{k} {len(v.images)}" for k, v in data.items())
        + f"; vocabulary {len(text.vocabulary)} tokens, "
        f"{unknown_rate(data['val'].references, text):.1%} of validation words unknown "
        f"({time.perf_counter() - started:.0f} s)"
    )
    if user_set is not None:
        print(f"split: {user_set.split_source}")
    pairs = {split: caption_pairs(data[split], text) for split in ("train", "val")}
    backbone = backbones.build_backbone(args.backbone, args.image_size, args.weights)
    models = build_models(backbone, len(text.vocabulary), args, args.weights != "none")
    work_dir = Path(tempfile.mkdtemp(prefix="kerve-captioner-"))
    history: dict[str, list[float]] = {}
    cache: dict[str, np.ndarray] = {}

    def dataset(split: str, frozen: bool) -> tf.data.Dataset:
        """Batches of ((backbone features or images, input tokens), targets)."""
        if frozen and split not in cache:
            cache[split] = backbone_features(backbone, data[split].images, spec)
        source = cache[split] if frozen else data[split].images
        return pipeline.make_caption_dataset(
            source, *pairs[split], args.batch_size, split == "train", args.seed,
            scale=None if frozen else (spec.mean, spec.std),
        )  # fmt: skip

    def fit(learning_rate: float, epochs: int) -> None:
        if epochs <= 0:
            return
        frozen = not backbone.trainable
        model = models.on_features if frozen else models.on_images
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate, clipnorm=5.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
        )
        result = model.fit(
            dataset("train", frozen),
            validation_data=dataset("val", frozen),
            epochs=epochs,
            callbacks=finetune.callbacks(work_dir, args.patience),
            verbose=args.verbose,
        )
        finetune.record(history, result)

    phase_starts = finetune.two_phases(backbone, fit, args, history)

    hypotheses = greedy_captions(models, data["test"].images, spec, text)
    report = caption_report(hypotheses, data["test"])
    val_report = caption_report(
        greedy_captions(models, data["val"].images, spec, text), data["val"]
    )
    plots.learning_curves(history, work_dir / "learning_curves.png", phase_starts)
    plots.caption_samples(
        data["test"].images[:SAMPLE_SCENES],
        hypotheses[:SAMPLE_SCENES],
        [refs[0] for refs in data["test"].references[:SAMPLE_SCENES]],
        work_dir / "test_samples.png",
    )
    elapsed = time.perf_counter() - started
    manifest = kerve_manifest.CaptioningManifest(
        input=kerve_manifest.InputSpec(
            height=args.image_size, width=args.image_size, channels=3, mean=spec.mean, std=spec.std
        ),
        text=text,
        batching=kerve_manifest.BatchingSpec(max_batch_size=16),
        description=describe(user_set)
        + f"; {args.decoder.upper()} captioner on {args.backbone} ({args.weights})",
        metrics={
            **{f"test_{key}": value for key, value in report.items()},
            "val_bleu_4": val_report["bleu_4"],
            ("test_scenes" if user_set is None else "test_images"): len(hypotheses),
            "test_samples": [
                {"caption": h, "references": refs}
                for h, refs in zip(
                    hypotheses[:SAMPLE_SCENES], data["test"].references, strict=False
                )
            ],
        },
        provenance={
            "script": "training.captioner",
            **data_provenance(user_set, counts, text, data),
            "decoder": args.decoder,
            "units": args.units,
            **finetune.provenance(args, history),
            "training_seconds": round(elapsed),
        },
    )
    artifacts = {
        name: work_dir / name for name in ("learning_curves.png", "test_samples.png", "history.csv")
    }
    path = export.publish(
        models.serving, manifest, args.out.parent, args.out.name, extra_files=artifacts
    )
    print_summary(path, report, val_report, hypotheses, data["test"], elapsed)
    return path


def describe(user_set) -> str:
    """What the model knows, in one line a user meets in GET /v1/models and the page."""
    if user_set is None:
        return (
            "describes Fashion-MNIST clothing items on photo backgrounds (synthetic Kerve "
            "scenes), not your photos"
        )
    return f"captions images like those of {user_set.directory}"


def data_provenance(user_set, counts: dict[str, int], text, data) -> dict:
    if user_set is None:
        return {
            "dataset": "kerve scenes and captions (training/data/scenes.py, captions.py)",
            "scenes": counts,
        }
    return {
        "dataset": str(user_set.directory),
        "format": user_set.format,
        "captions_file": str(user_set.captions_file),
        "split": user_set.split_source,
        "images": counts,
        "captions": {split: sum(map(len, part.references)) for split, part in data.items()},
        "normalisation": "NFKC, lower case, punctuation removed (inner - and ' kept)",
        "vocabulary": "training captions only",
        "test_unknown_word_rate": round(unknown_rate(data["test"].references, text), 4),
    }


def print_summary(path, report, val_report, hypotheses, test, elapsed) -> None:
    print("\n" + "=" * 72)
    print(f"published      {path}")
    print(
        "test BLEU-1..4 "
        + " ".join(f"{report[f'bleu_{n}']:.3f}" for n in range(1, 5))
        + f"   (validation BLEU-4 {val_report['bleu_4']:.3f})"
    )
    if "fact_accuracy" in report:
        print(
            f"fact accuracy  items+counts {report['fact_accuracy']:.3f}   background "
            f"{report['background_accuracy']:.3f}   both {report['all_facts_accuracy']:.3f}"
        )
    for hypothesis, references in list(zip(hypotheses, test.references, strict=True))[:3]:
        print(f"  {hypothesis!r}  (reference {references[0]!r})")
    print(f"took           {elapsed / 60:.1f} min; curves and sample captions beside the model")
    print("=" * 72)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, help="a folder of your images and captions (default: scenes)"
    )
    parser.add_argument(
        "--captions", type=Path, help="the captions file in --data, when it holds several"
    )
    parser.add_argument(
        "--vocab-size", type=int, help="keep the N most frequent training words (default: all)"
    )
    parser.add_argument(
        "--min-count", type=int, default=1, help="keep words seen this often in training"
    )
    finetune.add_arguments(parser, sorted(backbones.BACKBONES))
    parser.add_argument("--decoder", choices=sorted(DECODERS), default="lstm")
    parser.add_argument("--image-size", type=int, default=96, help="a multiple of 32")
    parser.add_argument("--units", type=int, default=256, help="recurrent state size")
    parser.add_argument("--embedding-dim", type=int, default=64)
    parser.add_argument("--context-dim", type=int, default=256, help="the image vector's size")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--max-length", type=int, default=32, help="words per caption, at most")
    parser.add_argument("--train-scenes", type=int, default=6000, help="built-in scenes only")
    parser.add_argument("--val-scenes", type=int, default=500, help="built-in scenes only")
    parser.add_argument("--test-scenes", type=int, default=1000, help="built-in scenes only")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("models/captioner"),
        help="the model's folder in the repository: models/<name>",
    )
    parser.set_defaults(head_epochs=15, epochs=0, patience=3, learning_rate=2e-3)
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        main()
    except DataError as error:  # a broken data set: the problems, not a traceback
        raise SystemExit(f"error: {error}") from None
