"""Train a tiny group (by default CRD, CRD+KD, MIMKD, RKD, DKD; digits 8x8, 2 epochs) and print each
member's per-epoch losses, its evaluation (test loss, top-1, top-5) and a digest of its final weights,
to compare two versions of the code:

    PYTHONPATH=OLD/workflow python benchmarks/same_losses.py > before.json
    PYTHONPATH=NEW/workflow python benchmarks/same_losses.py > after.json     # then diff them

``--methods KD,HSAKD,...`` trains another group; ``--compile MODE`` sets the students' ``compile``
(omitted or ``none``: the spec has no ``compile`` key, as before the option existed).
"""
import argparse, hashlib, json, tempfile
from pathlib import Path
import torch
torch.set_num_threads(1)
from mcmi.distill.hsakd import HSAKDTeacherHeads, save_teacher_heads
from mcmi.models import create_model, probe_shapes
from mcmi.stages import run_stage


parser = argparse.ArgumentParser()
parser.add_argument("--methods", default="CRD,CRD+KD,MIMKD,RKD,DKD")
parser.add_argument("--compile", default=None, choices=["none", "default", "reduce-overhead"])
args = parser.parse_args()
root = Path(tempfile.mkdtemp())
torch.manual_seed(7)
teacher = create_model("resnet14", 10)
torch.save({"model": teacher.state_dict()}, root / "t.pt")
save_teacher_heads(HSAKDTeacherHeads(probe_shapes(teacher, (3, 8, 8)), 10).heads, root / "heads.pt")
ds = {"kind": "digits", "image_size": 8, "max_train": 128, "max_test": 32}
members = []
for m in args.methods.split(","):
    members.append({"stage": "student", "dataset": ds, "seed": 3, "device": "cpu", "student": "resnet8",
        "teacher": "resnet14", "teacher_checkpoint": str(root / "t.pt"), "method": m,
        "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 16, "milestones": [1]},
        "hparams": {"nce_k": 16} if m in ("CRD", "CRD+KD", "MIMKD") else {},
        "out_metrics": str(root / m / "metrics.json"), "out_model": str(root / m / "model.pt"),
        "run": {"dataset": "digits", "teacher": "resnet14", "student": "resnet8", "method": m}})
    if m == "HSAKD":
        members[-1]["extra"] = {"hsakd_teacher_heads": str(root / "heads.pt")}
    if args.compile and args.compile != "none":
        members[-1]["compile"] = args.compile
run_stage({"stage": "student_group", "members": members})
out = {}
for s in members:
    h = json.loads(Path(s["out_metrics"]).read_text())["history"]
    w = torch.load(s["out_model"], weights_only=True)["model"]
    d = hashlib.sha256(b"".join(v.numpy().tobytes() for v in w.values())).hexdigest()[:16]
    out[s["method"]] = {"losses": [{k: v for k, v in e.items() if k.startswith("loss") or k == "train_loss"} for e in h],
                        "evaluation": [{k: e[k] for k in ("train_acc", "test_loss", "test_acc", "test_top5")} for e in h],
                        "weights": d}
print(json.dumps({"members": out}, indent=1), flush=True)
