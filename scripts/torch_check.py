"""Does PyTorch reproduce semiflow's top-1 with an exported model?

    python3 scripts/torch_check.py --model m.safetensors --dataset DATASET_DIR --expect-top1 0.304 \
        [--jpeg-root data/cifar10-small/test] [--logits semiflow_logits.f32]

DATASET_DIR holds semiflow's decoded dataset artifact (meta.json, test.u8, test-labels.u32le:
what `semiflow show dataset.NAME --json` lists): the very pixels semiflow evaluated on. The model
is built with scripts/semiflow_torch.py (torchvision blocks, load_state_dict(strict=True)), fed
pixels / 255 in eval mode, and its top-1 must equal --expect-top1 exactly (as a count of images).
With --logits (N×classes little-endian f32, semiflow's own logits) it also reports the largest
logit difference and how many argmaxes differ. With --jpeg-root it decodes the same JPEGs with
PIL (libjpeg-turbo) and reports how far those pixels are from semiflow's decoder and the top-1
on them. Prints one JSON object; exits 1 if the top-1 differs.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import semiflow_torch  # noqa: E402


def predict(model, pixels_hwc, batch=256):
    """Logits for N×H×W×C uint8 pixels: x = pixel / 255, NCHW float32."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pixels_hwc), batch):
            x = torch.from_numpy(pixels_hwc[i : i + batch]).permute(0, 3, 1, 2).float() / 255.0
            out.append(model(x))
    return torch.cat(out).numpy()


def pil_pixels(root, classes):
    from PIL import Image

    images, labels = [], []
    for label, cls in enumerate(classes):
        d = os.path.join(root, cls)
        for name in sorted(os.listdir(d)):
            if name.rsplit(".", 1)[-1].lower() in ("jpg", "jpeg", "png"):
                with Image.open(os.path.join(d, name)) as im:
                    images.append(np.asarray(im.convert("RGB")))
                labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--expect-top1", type=float, required=True)
    ap.add_argument("--logits")
    ap.add_argument("--jpeg-root")
    a = ap.parse_args()

    with open(os.path.join(a.dataset, "meta.json")) as f:
        meta = json.load(f)
    h, w, c = meta["height"], meta["width"], meta["channels"]
    pixels = np.fromfile(os.path.join(a.dataset, "test.u8"), dtype=np.uint8).reshape(-1, h, w, c)
    labels = np.fromfile(os.path.join(a.dataset, "test-labels.u32le"), dtype="<u4").astype(np.int64)

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, sidecar = semiflow_torch.load(a.model)
    logits = predict(model, pixels)
    correct = int((logits.argmax(1) == labels).sum())
    expected = round(a.expect_top1 * len(labels))
    report = {
        "torch": torch.__version__,
        "images": len(labels),
        "model": sidecar.get("source", {}).get("node"),
        "semiflow_top1": a.expect_top1,
        "torch_top1": correct / len(labels),
        "torch_correct": correct,
        "semiflow_correct": expected,
    }
    if a.logits:
        theirs = np.fromfile(a.logits, dtype="<f4").reshape(logits.shape)
        report["max_abs_logit_diff"] = float(np.abs(theirs - logits).max())
        report["argmax_differs"] = int((theirs.argmax(1) != logits.argmax(1)).sum())
    if a.jpeg_root:
        pil, pil_labels = pil_pixels(a.jpeg_root, meta["classes"])
        if pil.shape == pixels.shape and (pil_labels == labels).all():
            diff = np.abs(pil.astype(np.int16) - pixels.astype(np.int16))
            pil_correct = int((predict(model, pil).argmax(1) == labels).sum())
            report["pil"] = {
                "max_abs_pixel_diff": int(diff.max()),
                "mean_abs_pixel_diff": float(diff.mean()),
                "differing_bytes": float((diff > 0).mean()),
                "images_with_a_difference": int((diff.reshape(len(diff), -1).max(1) > 0).sum()),
                "torch_top1_on_pil_pixels": pil_correct / len(labels),
            }
        else:
            report["pil"] = "skipped: the JPEG tree does not match the dataset's test split"
    print(json.dumps(report, indent=1))
    return 0 if correct == expected else 1


if __name__ == "__main__":
    sys.exit(main())
