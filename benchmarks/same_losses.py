"""Train a tiny group (CRD, CRD+KD, MIMKD, RKD, DKD; digits 8x8, 2 epochs) and print each member's
per-epoch losses and a digest of its final weights, to compare two versions of the code:

    PYTHONPATH=OLD/workflow python benchmarks/same_losses.py > before.json
    PYTHONPATH=NEW/workflow python benchmarks/same_losses.py > after.json     # then diff them
"""
import hashlib, json, sys, tempfile
from pathlib import Path
import torch
torch.set_num_threads(1)
from mcmi.models import create_model
from mcmi.stages import run_stage
import mcmi
root = Path(tempfile.mkdtemp())
torch.manual_seed(7)
teacher = create_model("resnet14", 10)
torch.save({"model": teacher.state_dict()}, root / "t.pt")
ds = {"kind": "digits", "image_size": 8, "max_train": 128, "max_test": 32}
members = []
for m in ["CRD", "CRD+KD", "MIMKD", "RKD", "DKD"]:
    members.append({"stage": "student", "dataset": ds, "seed": 3, "device": "cpu", "student": "resnet8",
        "teacher": "resnet14", "teacher_checkpoint": str(root / "t.pt"), "method": m,
        "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 16, "milestones": [1]},
        "hparams": {"nce_k": 16} if m in ("CRD", "CRD+KD", "MIMKD") else {},
        "out_metrics": str(root / m / "metrics.json"), "out_model": str(root / m / "model.pt"),
        "run": {"dataset": "digits", "teacher": "resnet14", "student": "resnet8", "method": m}})
run_stage({"stage": "student_group", "members": members})
out = {}
for s in members:
    h = json.loads(Path(s["out_metrics"]).read_text())["history"]
    w = torch.load(s["out_model"], weights_only=True)["model"]
    d = hashlib.sha256(b"".join(v.numpy().tobytes() for v in w.values())).hexdigest()[:16]
    out[s["method"]] = {"losses": [{k: v for k, v in e.items() if k.startswith("loss") or k == "train_loss"} for e in h], "weights": d}
print(json.dumps({"code": mcmi.__file__, "members": out}, indent=1), flush=True)
