"""Flask + PyTorch server for the Fashion-MNIST model: the baseline that
bench/serving/runtime compares spotml's builtin runtime against.

It is what one would write without a model server: Flask's own threaded
server, the model as a torch.nn.Module in eval mode, one forward pass per
request (no batching across requests), the request and answer in the
KServe v2 JSON the builtin runtime speaks, so that the same wrk script
drives both.

The network is train.py's Net, defined again here (train.py runs its
training when imported); its weights are read from the ONNX file, whose
initializers carry the PyTorch parameter names (conv1.weight, ...).

    /usr/bin/python3 bench/serving/flask/app.py --model examples/fashion-mnist/model.onnx \
        --port 8600 --threads 1

Needs Debian's python3-flask, python3-torch and python3-onnx.
"""

import argparse
import json
import logging

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from flask import Flask, Response, request
from onnx import numpy_helper


class Net(nn.Module):
    """examples/fashion-mnist/train.py's Net."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):  # x: [batch, 1, 28, 28] float32 in 0..1
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)  # logits [batch, 10]


def load(path):
    """Net with the weights of the ONNX model at path."""
    graph = onnx.load(path).graph
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    model = Net()
    model.load_state_dict(weights, strict=True)  # every parameter, by name
    return model.eval()


def create_app(model, name):
    app = Flask(__name__)

    @app.get("/v2/health/ready")
    def ready():
        return ""

    @app.post(f"/v2/models/{name}/infer")
    def infer():
        req = request.get_json(force=True)
        inp = req["inputs"][0]
        if inp.get("datatype") != "FP32" or len(inp.get("shape", [])) != 4:
            return Response(json.dumps({"error": "want one FP32 input of shape [N,1,28,28]"}), 400, mimetype="application/json")
        x = torch.tensor(inp["data"], dtype=torch.float32).reshape(inp["shape"])
        with torch.inference_mode():
            y = model(x)
        out = {
            "model_name": name,
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": list(y.shape), "data": y.flatten().tolist()}],
        }
        if "id" in req:
            out["id"] = req["id"]
        return Response(json.dumps(out), mimetype="application/json")

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="examples/fashion-mnist/model.onnx")
    ap.add_argument("--name", default="fmnist", help="model name in the request path")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8600)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (torch.set_num_threads)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    model = load(args.model)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    print(f"flask+torch {torch.__version__}: model {args.name} on http://{args.host}:{args.port}, {args.threads} thread(s)", flush=True)
    # threaded: one thread per connection, as Flask serves by default.
    create_app(model, args.name).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
