"""Run by tests under torchrun: train the toy model in however many processes torchrun started."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from relion_canon.context import QUIET
from relion_canon.logs import log_to
from relion_canon.models import MODEL_CLASSES
from relion_canon.train import TrainConfig, train

MODEL_CLASSES["toy"] = "tests.train.toy_model:ToyModel"

if __name__ == "__main__":
    star, out, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = TrainConfig(model="toy", model_options={"augment": False}, epochs=epochs, batch_size=32, seed=1, threads=1)
    with log_to(sys.stdout):  # every rank listens; the engine itself logs on rank 0 only
        result = train(star, out, config, context=QUIET)
    rank = os.environ.get("RANK", "0")
    (Path(out) / f"history_rank{rank}.json").write_text(json.dumps(result.history))
