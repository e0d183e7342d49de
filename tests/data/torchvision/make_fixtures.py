# Writes tests/data/torchvision/{resnet18,resnet50}.json: every state_dict key of torchvision's
# ResNet-18/50 (default: ImageNet stem, 1000 classes), its shape and dtype, in state_dict order.
import json, torch, torchvision
for name in ["resnet18", "resnet50"]:
    sd = getattr(torchvision.models, name)().state_dict()
    lines = [json.dumps([k, list(v.shape), str(v.dtype).replace("torch.", "")]) for k, v in sd.items()]
    made = f"torch {torch.__version__}, torchvision {torchvision.__version__}: torchvision.models.{name}().state_dict()"
    with open(f"{name}.json", "w") as f:
        f.write('{"made_with": ' + json.dumps(made) + ',\n"tensors": [\n' + ",\n".join(lines) + "\n]}\n")
    print(name, len(sd))
