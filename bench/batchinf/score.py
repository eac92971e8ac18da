#!/usr/bin/python3
"""What a user writes without spotml: one process on one node that loops over
the PNG files, scores them in batches with PyTorch and writes one result per
input (the same JSON line spotml's builtin runtime writes).

The model is examples/fashion-mnist/train.py's Net with the weights of the
shipped examples/fashion-mnist/model.onnx (its initializers carry the
state_dict names, so the two are the same model). Prints one JSON line of
figures at the end.

  score.py --input DIR --output DIR --keys FILE --model model.onnx [--batch 32] [--threads 1]
"""

import argparse
import importlib.util
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py: a shared machine

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402
import torch  # noqa: E402


def load_net(train_py, model_onnx):
    spec = importlib.util.spec_from_file_location("fmnist_train", train_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.Net()
    proto = onnx.load(model_onnx)
    state = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer}
    net.load_state_dict(state)  # strict: every weight named, none left over
    net.eval()
    return net


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--keys", required=True, help="file of input keys, one a line")
    p.add_argument("--model", required=True)
    p.add_argument("--train-py", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    net = load_net(a.train_py, a.model)
    keys = [k for k in open(a.keys).read().split("\n") if k]

    t0 = time.time()
    done = 0
    with torch.no_grad():
        for s in range(0, len(keys), a.batch):
            batch = keys[s:s + a.batch]
            x = np.stack([np.asarray(Image.open(os.path.join(a.input, k)).convert("L"), dtype=np.float32) / 255.0
                          for k in batch])
            logits = net(torch.from_numpy(x).unsqueeze(1)).numpy()
            for k, row in zip(batch, logits):
                out = os.path.join(a.output, k + ".jsonl")
                os.makedirs(os.path.dirname(out), exist_ok=True)
                vals = [float(np.format_float_positional(v, unique=True, trim="-")) for v in row]
                line = json.dumps({"input": k, "class": int(np.argmax(row)), "outputs": {"logits": vals}},
                                  separators=(",", ":")) + "\n"
                tmp = out + ".tmp"
                with open(tmp, "w") as f:
                    f.write(line)
                os.replace(tmp, out)  # whole or not at all, as spotml writes
                done += 1
    print(json.dumps({"items": done, "seconds": time.time() - t0, "torch": torch.__version__, "threads": a.threads}))


if __name__ == "__main__":
    sys.exit(main())
