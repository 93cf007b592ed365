"""Does a stand-in CLIP know every cue of the built-in dataset, in both towers?

    python benchmarks/standin_clip.py [--standin DIR ...] [--data DATA]

Per cue (palette, scene, main object) and per stand-in directory:

* **zero-shot**: the share of real test images whose CLIP image embedding is closest to the text embedding of its
  own cue name (the names alone, as the classifier prior reads them; the other two cues are not named);
* **names' cosine**: the mean pairwise cosine of the projected text embeddings of the cue's names (what α weighs:
  alike names give a flat prior);
* **probe**: a linear probe of the vision tower's pooled features, trained on the training images, on the test images;
* **prior max / TV**: for scenes and objects, the classifier prior P(e | a) that α reads (METHOD §3: a head trained
  on the CLIP's image embeddings of the training images, applied to the names' text embeddings): the mean of its
  rows' maxima (uniform: 0.125) and its mean total-variation distance from the co-occurrence prior counted from
  the annotations (0: the names are read as the images are; about 0.6 for a flat prior);
* **SD text**: the mean cosine of SD's text encoder's end-of-text states between full captions that differ only in
  this cue (how well the UNet can be told it).

Chance: 25 % (palette), 16.7 % (scene, object). Prints a table and one JSON line per stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standin", nargs="+", default=None, help="stand-in directories (default: the shipped one)")
    parser.add_argument("--data", default="runs/bench-generation/data", help="the built-in dataset (made if absent)")
    parser.add_argument("--probe-steps", type=int, default=500, help="full-batch steps of each linear probe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import CLIPModel, CLIPTextModel

    from uniemo.config import JointConfig, ModelConfig
    from uniemo.data.images import load_image
    from uniemo.data.synth import OBJECTS, PALETTES, SCENES, SynthConfig, write_synthetic_dataset
    from uniemo.data.transforms import ClipTransform
    from uniemo.models.alpha import classifier_prior, cooccurrence_prior, train_prior_head
    from uniemo.models.factory import clip_tokenizer, encode_texts, load_clip_text, standin_path

    PRIOR_EPOCHS = JointConfig().prior_epochs
    template = ModelConfig().attribute_template  # how stage 1 and the prior name an attribute
    from uniemo.data.synth import caption_of

    data = Path(args.data)
    if not (data / "info.json").is_file():
        write_synthetic_dataset(data, SynthConfig(seed=args.seed), overwrite=True)
    names = {"palette": PALETTES, "scene": SCENES, "object": OBJECTS}
    tokenizer = clip_tokenizer()

    def split(which: str) -> tuple[list[Path], dict[str, torch.Tensor]]:
        paths, labels = [], {cue: [] for cue in names}
        for entry in json.loads((data / f"{which}.json").read_text()):
            ann = json.loads((data / entry[2]).read_text())
            paths.append(data / entry[1])
            for cue, value in (("palette", ann["palette"]), ("scene", ann["scene"]), ("object", ann["object"][0])):
                labels[cue].append(names[cue].index(value))
        return paths, {cue: torch.tensor(v) for cue, v in labels.items()}

    train_paths, y_train = split("train")
    entries = json.loads((data / "train.json").read_text())
    classes = sorted({e[0] for e in entries})
    emotions = torch.tensor([classes.index(e[0]) for e in entries])
    cooccurrence = {
        cue: cooccurrence_prior([[a] for a in y_train[cue].tolist()], emotions.tolist(), len(names[cue]), len(classes))
        for cue in ("scene", "object")
    }
    test_paths, y_test = split("test")

    @torch.no_grad()
    def features(clip: CLIPModel, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        transform = ClipTransform(clip.config.vision_config.image_size)
        pooled, embeds = [], []
        for i in range(0, len(paths), 256):
            pixels = torch.stack([transform(load_image(p)) for p in paths[i : i + 256]])
            out = clip.vision_model(pixel_values=pixels)
            pooled.append(out.pooler_output)
            embeds.append(F.normalize(clip.visual_projection(out.pooler_output), dim=-1))
        return torch.cat(pooled), torch.cat(embeds)

    def probe(x_train: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_true: torch.Tensor) -> float:
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        torch.manual_seed(args.seed)
        head = torch.nn.Linear(x_train.shape[1], int(y.max()) + 1)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(args.probe_steps):
            loss = F.cross_entropy(head((x_train - mean) / std), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float((head((x_test - mean) / std).argmax(1) == y_true).float().mean())

    @torch.no_grad()
    def eot_cosine(encoder: CLIPTextModel, cue: str) -> float:
        """Mean cosine of the end-of-text states of full captions that differ only in ``cue``."""
        sims = []
        for p in PALETTES:
            for s in SCENES:
                for o in OBJECTS:
                    if names[cue].index({"palette": p, "scene": s, "object": o}[cue]) != 0:
                        continue
                    group = [
                        caption_of(*{"palette": (s, (o,), v), "scene": (v, (o,), p), "object": (s, (v,), p)}[cue])
                        for v in names[cue]
                    ]
                    tokens = tokenizer(group, padding=True, return_tensors="pt")
                    out = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
                    eot = F.normalize(out.pooler_output, dim=-1)
                    sim = eot @ eot.T
                    sims.append(sim[~torch.eye(len(group), dtype=torch.bool)].mean())
        return float(torch.stack(sims).mean())

    roots = [Path(p) for p in args.standin] if args.standin else [standin_path()]
    for root in roots:
        clip = CLIPModel.from_pretrained(root / "clip", dtype=torch.float32, use_safetensors=True).eval()
        text_model = load_clip_text(str(root / "clip"))[0].float().eval()  # the tower α's prior reads names with
        sd_text = CLIPTextModel.from_pretrained(root / "sd" / "text_encoder", dtype=torch.float32).eval()
        pooled_train, embeds_train = features(clip, train_paths)
        head = train_prior_head(embeds_train, emotions, len(classes), epochs=PRIOR_EPOCHS, seed=args.seed)
        pooled_test, embeds_test = features(clip, test_paths)
        result: dict = {"standin": str(root)}
        header = (
            f"{'cue':<8} {'zero-shot':>10} {'names cos':>10} {'probe':>8} {'SD text':>8} {'prior max':>9} {'TV':>6}"
        )
        print(f"\n{root}\n{header}")
        for cue, cue_names in names.items():
            text = encode_texts(text_model, tokenizer, [template.format(n) for n in cue_names])
            zero_shot = float(((embeds_test @ text.T).argmax(1) == y_test[cue]).float().mean())
            sim = text @ text.T
            names_cos = float(sim[~torch.eye(len(cue_names), dtype=torch.bool)].mean())
            probe_acc = probe(pooled_train, y_train[cue], pooled_test, y_test[cue])
            sd_cos = eot_cosine(sd_text, cue)
            result[cue] = {
                "zero_shot": zero_shot,
                "names_cosine": names_cos,
                "probe": probe_acc,
                "sd_text_eot": sd_cos,
            }
            prior_cells = ""
            if cue in cooccurrence:
                prior = classifier_prior(head, text)
                result[cue]["prior_row_max"] = float(prior.max(1).values.mean())
                result[cue]["prior_tv"] = float(0.5 * (prior - cooccurrence[cue]).abs().sum(1).mean())
                prior_cells = f" {result[cue]['prior_row_max']:>9.2f} {result[cue]['prior_tv']:>6.2f}"
            print(f"{cue:<8} {zero_shot:>10.1%} {names_cos:>10.2f} {probe_acc:>8.1%} {sd_cos:>8.2f}{prior_cells}")
        truth = {cue: float(prior.max(1).values.mean()) for cue, prior in cooccurrence.items()}
        print("the co-occurrence prior's row maxima: " + ", ".join(f"{c} {v:.2f}" for c, v in truth.items()))
        print(json.dumps({**result, "cooccurrence_row_max": truth}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
