"""`fmbff train` under torchrun: DDP over 2 CPU processes talking gloo."""

import csv
import os
import subprocess
import sys

from conftest import disks
from napari_fmbff import load_model
from napari_fmbff.data.datasets import write_dataset


def test_torchrun_two_processes_train_one_model(tmp_path):
    data = write_dataset(tmp_path / "data", disks(12))
    out = tmp_path / "models" / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "napari_fmbff.cli", "train", str(data), "--out", str(out),
         "--encoder", "test_efficientnet", "--epochs", "6", "--batch-size", "2",
         "--tile-size", "64", "--lr", "3e-3", "--device", "cpu"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Rank 0 alone talks and writes: one announcement, one model, one log, one plot.
    assert proc.stderr.count("DDP over 2 processes") == 1, proc.stderr[-3000:]
    assert proc.stderr.count("saved") == 1
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "ddp.log.csv", "ddp.loss.png", "ddp.safetensors"]
    prov = load_model(out).metadata["provenance"]
    assert prov["processes"] == 2 and prov["n_train"] + prov["n_val"] == 12
    rows = list(csv.DictReader(open(out.parent / "ddp.log.csv")))
    assert len(rows) == prov["epochs_run"] == 6
    # Loss averaged over both processes, and learning happened across them.
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert prov["best_val_dice"] > prov["initial_val_dice"]
