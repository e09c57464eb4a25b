"""FuxiCTR 2.3.10's DCNv2 and ``mixrec run``'s DCNv2 on Frappe, side by side: samples/s and test AUC / logloss.

    .venv/bin/python bench/fuxictr_parity.py --fuxictr-python /work/fuxi-venv/bin/python --json /tmp/parity.json

Same model on both sides (BARS DCNv2 on Frappe_x1: embedding 10, 4 full-rank cross layers in parallel with a
3x400 ReLU DNN with batch norm, dropout 0.2, embedding L2 0.05), same global batch (4096), same epochs (2),
Adam 1e-3, best-validation-AUC weights tested. Data: ``train_reconstructed.parquet``, ``valid.parquet``,
``test.parquet`` from ``--data`` (default ``../shared/data/frappe`` relative to the repo root).

* **FuxiCTR** runs in its own venv (``--fuxictr-python``; never the project's), as a subprocess running this
  file with ``--side fuxictr``: FuxiCTR's ``FeatureProcessor`` builds the feature map from the same Parquet
  files (polars), the model is a composition of FuxiCTR's ``BaseModel``, ``FeatureEmbedding``, ``CrossNetV2``
  and ``MLP_Block`` (the model zoo's DCNv2 is not in the wheel), trained with ``BaseModel.fit`` on FuxiCTR's
  in-memory ``NpzDataLoader`` (shuffled, ``num_workers=0``): one process, torch threads = the machine's cores.
  Its samples/s is each epoch's training time, validation excluded.
* **mixrec** is the real ``mixrec run`` (a config in a temp workspace, Frappe through the dataset schema
  ``configs/datasets/frappe.yaml`` with absolute file paths), with the default Ray Train workers. Its samples/s
  is ``train_global_samples_per_s`` of each epoch (all workers' rows / the slowest worker's epoch time,
  validation excluded) from the run's MLflow training run; the test metrics are the run's ``test_auc`` and
  ``test_logloss``.

Prints one line per side and the ratios (mixrec / FuxiCTR); ``--json`` writes them. Only the standard library
is imported at the top: the FuxiCTR side imports FuxiCTR, the mixrec side runs the ``mixrec`` CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
SPLITS = {"train": "train_reconstructed.parquet", "valid": "valid.parquet", "test": "test.parquet"}
MODEL = {"embedding_dim": 10, "num_cross_layers": 4, "structure": "parallel", "dnn_dims": [400, 400, 400],
         "batch_norm": True, "dropout": 0.2}
EMBEDDING_L2 = 0.05
LEARNING_RATE = 1e-3


# --- FuxiCTR side (runs in the FuxiCTR venv) -----------------------------------------------------------------
def fuxictr_side(args) -> dict:
    import logging

    import numpy as np
    import torch
    from fuxictr.preprocess import FeatureProcessor
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.layers import CrossNetV2, FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel
    from fuxictr.pytorch.torch_utils import seed_everything
    from torch import nn

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(os.cpu_count() or 1)
    seed_everything(args.seed)
    work = Path(args.workdir)
    data = Path(args.data)

    # Feature map and ids: FuxiCTR's own processor, fitted on train (min count 1; 0 = padding, last = OOV).
    processor = FeatureProcessor(feature_cols=[{"name": FIELDS, "active": True, "dtype": "str", "type": "categorical"}],
                                 label_col={"name": "label", "dtype": "float"}, dataset_id="frappe_parity",
                                 data_root=str(work))
    frames = {split: processor.preprocess(processor.read_data(str(data / name), data_format="parquet"))
              for split, name in SPLITS.items()}
    processor.fit(frames["train"], min_categr_count=1)
    paths = {}
    for split, frame in frames.items():
        columns = {c: frame.select(c).collect().to_series().to_numpy() for c in FIELDS + ["label"]}
        encoded = processor.transform(columns)
        paths[split] = str(work / f"{split}.npz")
        np.savez(paths[split], **{c: np.asarray(encoded[c]) for c in FIELDS},
                 label=np.asarray(columns["label"], dtype=np.float32))
    feature_map = processor.feature_map
    feature_map.default_emb_dim = MODEL["embedding_dim"]  # what FeatureMap.load sets from the model params

    class DCNv2(BaseModel):
        """FuxiCTR's model-zoo DCNv2 (parallel, full rank), composed of the wheel's core and layers."""

        def __init__(self, feature_map, **kwargs):
            super().__init__(feature_map, model_id="DCNv2", gpu=-1, embedding_regularizer=EMBEDDING_L2,
                             net_regularizer=0, **kwargs)
            self.embedding_layer = FeatureEmbedding(feature_map, MODEL["embedding_dim"])
            input_dim = feature_map.sum_emb_out_dim()
            self.crossnet = CrossNetV2(input_dim, MODEL["num_cross_layers"])
            self.parallel_dnn = MLP_Block(input_dim=input_dim, output_dim=None, hidden_units=MODEL["dnn_dims"],
                                          hidden_activations="ReLU", output_activation=None,
                                          dropout_rates=MODEL["dropout"], batch_norm=MODEL["batch_norm"])
            self.fc = nn.Linear(input_dim + MODEL["dnn_dims"][-1], 1)
            self.compile("adam", "binary_crossentropy", LEARNING_RATE)
            self.reset_parameters()
            self.model_to_device()
            self.epoch_seconds, self._eval_seconds = [], 0.0

        def forward(self, inputs):
            emb = self.embedding_layer(self.get_inputs(inputs), flatten_emb=True)
            out = self.fc(torch.cat([self.crossnet(emb), self.parallel_dnn(emb)], dim=-1))
            return {"y_pred": self.output_activation(out)}

        # timing: each epoch's training, the validation at its end excluded
        def train_epoch(self, data_generator):
            self._eval_seconds, t0 = 0.0, time.perf_counter()
            super().train_epoch(data_generator)
            self.epoch_seconds.append(time.perf_counter() - t0 - self._eval_seconds)

        def eval_step(self):
            t0 = time.perf_counter()
            super().eval_step()
            self._eval_seconds += time.perf_counter() - t0

    model = DCNv2(feature_map, verbose=0, model_root=str(work / "checkpoints"), metrics=["logloss", "AUC"])
    os.makedirs(model.model_dir, exist_ok=True)  # FuxiCTR's run script makes it; fit saves the best weights there
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", train_data=paths["train"],
                                          valid_data=paths["valid"], batch_size=args.batch_size, shuffle=True,
                                          data_format="npz", num_workers=0)
    rows = train_gen.num_samples
    model.fit(train_gen, epochs=args.epochs, validation_data=valid_gen)  # ends with the best weights loaded
    test_gen = RankDataLoader(feature_map, stage="test", test_data=paths["test"], batch_size=args.batch_size,
                              shuffle=False, data_format="npz", num_workers=0)
    test = model.evaluate(test_gen)
    return {"side": "fuxictr", "epochs": args.epochs, "batch_size": args.batch_size, "train_rows": rows,
            "threads": torch.get_num_threads(), "samples_per_s": [rows / s for s in model.epoch_seconds],
            "test_auc": float(test["AUC"]), "test_logloss": float(test["logloss"])}


# --- mixrec side (the project's venv, the real `mixrec run`) -------------------------------------------------
def parse_setup(text: str) -> dict:
    """``2x0.5`` -> {num_workers: 2, cpus_per_worker: 0.5}; ``1x1t2`` also sets torch_threads: 2; a JSON object
    after a colon adds train settings: ``2x0.5:{"shuffle_buffer_batches": 0}``."""
    try:
        shape, _, extra = text.partition(":")
        workers, rest = shape.split("x")
        cpus, _, threads = rest.partition("t")
        setup = {"num_workers": int(workers), "cpus_per_worker": float(cpus), **json.loads(extra or "{}")}
        return {**setup, "torch_threads": int(threads)} if threads else setup
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WORKERSxCPUS[tTHREADS][:JSON], e.g. 2x0.5, 1x1t2 or "
                                         '2x0.5:{"shuffle_buffer_batches": 0}') from None


def mixrec_side(args, work: Path, setup: dict) -> dict:
    import yaml

    schema = yaml.safe_load((REPO_ROOT / "configs" / "datasets" / "frappe.yaml").read_text())
    schema["files"] = {split: str(Path(args.data).resolve() / name) for split, name in SPLITS.items()}
    (work / "frappe.yaml").write_text(yaml.safe_dump(schema))
    cfg = {"workspace": str(work / "ws"), "data": {"schema": str(work / "frappe.yaml")},
           "preprocess": {"min_count": 1}, "model": {"name": "dcnv2", "kwargs": MODEL},
           "train": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": LEARNING_RATE,
                     "embedding_l2": EMBEDDING_L2, "seed": args.seed,
                     **setup},
           "registry": {"model_name": "parity-dcnv2"}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    mixrec = Path(sys.executable).with_name("mixrec")
    done = subprocess.run([str(mixrec), "run", str(work / "config.yaml"), "--fresh", "--json"], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    if done.returncode:
        sys.exit(f"mixrec run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout)
    run_id = json.loads((work / "ws" / "artifacts" / "last_run.json").read_text())["run_id"]

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'ws' / 'mlflow.db'}")
    run = client.get_run(run_id)
    train_run = client.search_runs([run.info.experiment_id],
                                   filter_string=f"tags.mlflow.parentRunId = '{run_id}'")[0]
    history = sorted(client.get_metric_history(train_run.info.run_id, "train_global_samples_per_s"),
                     key=lambda m: m.step)
    params = train_run.data.params
    return {"side": "mixrec", "epochs": args.epochs, "batch_size": args.batch_size,
            "train_rows": int(run.data.metrics["rows_train_rows"]), "num_workers": int(params["train.num_workers"]),
            "cpus_per_worker": float(params["train.cpus_per_worker"]), "torch_threads": params.get("train.torch_threads"),
            "train_settings": {k: v for k, v in setup.items() if k not in ("num_workers", "cpus_per_worker", "torch_threads")},
            "samples_per_s": [m.value for m in history], "test_auc": result["metrics"]["test_auc"],
            "test_logloss": result["metrics"]["test_logloss"],
            "valid_calibration_by_epoch": [m.value for m in sorted(client.get_metric_history(
                train_run.info.run_id, "valid_calibration"), key=lambda m: m.step)],
            "test_calibration": run.data.metrics["test_calibration"],
            "train_step_seconds": run.data.metrics.get("step_seconds_train")}


def setup_name(r: dict) -> str:
    threads = f"t{r['torch_threads']}" if r.get("torch_threads") not in (None, "None") else ""
    extra = f":{json.dumps(r['train_settings'])}" if r.get("train_settings") else ""
    return f"{r['num_workers']}x{r['cpus_per_worker']:g}{threads}{extra}"


def line(r: dict) -> str:
    rates = " / ".join(f"{x:,.0f}" for x in r["samples_per_s"])
    side = r["side"] if r["side"] == "fuxictr" else f"mixrec {setup_name(r)}"
    return (f"{side:14s} samples/s by epoch {rates}; test AUC {r['test_auc']:.4f}, logloss "
            f"{r['test_logloss']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO_ROOT / ".." / "shared" / "data" / "frappe"))
    p.add_argument("--fuxictr-python", help="python of a venv with fuxictr==2.3.10 (not the project's)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4096, help="global batch (mixrec: train.batch_size)")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--mixrec-setup", action="append", type=parse_setup, default=None, metavar="WxC[tT][:JSON]",
                   help="train.num_workers x train.cpus_per_worker [t train.torch_threads] [:JSON of other train "
                        "settings], e.g. 2x0.5, 1x1t2 or 2x0.5:{\"max_grad_norm\": 10}; repeat to run several mixrec "
                        "setups in the same run (default: mixrec's defaults)")
    p.add_argument("--skip", choices=["fuxictr", "mixrec"], help="run one side only")
    p.add_argument("--json", help="write both sides' figures and the ratios here")
    p.add_argument("--side", choices=["fuxictr"], help=argparse.SUPPRESS)  # internal: the FuxiCTR subprocess
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side == "fuxictr":
        Path(args.out).write_text(json.dumps(fuxictr_side(args)))
        return
    for name in SPLITS.values():
        if not (Path(args.data) / name).is_file():
            sys.exit(f"--data {args.data}: {name} not found")
    if args.skip != "fuxictr" and not args.fuxictr_python:
        sys.exit("--fuxictr-python is required (a venv with fuxictr==2.3.10), or --skip fuxictr")
    results = {}
    with tempfile.TemporaryDirectory(prefix="mixrec-parity-") as tmp:
        tmp = Path(tmp)
        if args.skip != "fuxictr":
            (tmp / "fuxictr").mkdir()
            out = tmp / "fuxictr.json"
            cmd = [args.fuxictr_python, str(Path(__file__).resolve()), "--side", "fuxictr", "--data",
                   str(Path(args.data).resolve()), "--workdir", str(tmp / "fuxictr"), "--out", str(out),
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:  # report it, and still run the mixrec side
                print(f"FuxiCTR side failed ({done.returncode}):\n{done.stderr[-4000:]}", file=sys.stderr, flush=True)
                results["fuxictr_error"] = done.stderr[-4000:]
            else:
                results["fuxictr"] = json.loads(out.read_text())
                print(line(results["fuxictr"]), flush=True)
        if args.skip != "mixrec":
            results["mixrec"] = []
            for i, setup in enumerate(args.mixrec_setup or [{}]):
                (tmp / f"mixrec{i}").mkdir()
                results["mixrec"].append(mixrec_side(args, tmp / f"mixrec{i}", setup))
                print(line(results["mixrec"][-1]), flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if "fuxictr" in results and "mixrec" in results:
        f = results["fuxictr"]
        results["ratios"] = []
        for m in results["mixrec"]:
            ratios = {"samples_per_s_by_epoch": [a / b for a, b in zip(m["samples_per_s"], f["samples_per_s"], strict=False)],
                      "samples_per_s_mean": (sum(m["samples_per_s"]) / len(m["samples_per_s"]))
                      / (sum(f["samples_per_s"]) / len(f["samples_per_s"])),
                      "test_auc_delta": m["test_auc"] - f["test_auc"],
                      "test_logloss_delta": m["test_logloss"] - f["test_logloss"]}
            results["ratios"].append(ratios)
            print(f"mixrec {setup_name(m)} / FuxiCTR samples/s: by epoch "
                  f"{' / '.join(f'{x:.2f}' for x in ratios['samples_per_s_by_epoch'])}, "
                  f"mean {ratios['samples_per_s_mean']:.2f} (goal >= 1.5); test AUC {ratios['test_auc_delta']:+.4f}, "
                  f"logloss {ratios['test_logloss_delta']:+.4f} (goal: AUC >= 0, logloss <= 0)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if "fuxictr_error" in results:
        sys.exit(1)


if __name__ == "__main__":
    main()
