#!/usr/bin/python3
"""Fashion-MNIST CNN training that survives spot evictions.

Runs under the spotml agent (see README.md) or by hand. Settings come from
environment variables, each overridable by the matching command-line flag:

  EPOCHS (8)  BATCH_SIZE (64)  LR (0.001)  SEED (1)  NUM_THREADS (2)
  OMP_WAIT_POLICY (PASSIVE; read by the OpenMP runtime)
  CHECKPOINT_EVERY_SECONDS (5)  CHECKPOINT_EVERY_STEPS (0 = off)
  LOG_EVERY (100)  DATA_DIR (/usr/share/datasets/fashion-mnist)  OUT_DIR (out)

Checkpoints go to $SPOTML_CHECKPOINT_DIR (default ./ckpt) as ckpt.pt, written
to a temporary file and renamed over the old one, so the directory always holds
a complete checkpoint. One is written every CHECKPOINT_EVERY_SECONDS seconds of
training, at the end of each epoch, and on SIGTERM (after which the script
exits with status 143). A run that finds ckpt.pt resumes from it exactly:
model, optimizer, epoch, step within the epoch (the data order of each epoch is
a function of SEED and the epoch number) and the torch RNG state.

At the end it writes out/model.onnx, out/model.pt and out/metrics.json.
"""

import argparse
import gzip
import json
import os
import signal
import sys
import time

# OpenMP threads that spin while waiting are fast on an idle machine and
# disastrous on a shared one (the local provider runs every simulated node on
# the same host): measured 4 vs 17 steps/s next to one busy process. Must be set
# before torch loads its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CKPT_NAME = "ckpt.pt"
CKPT_FORMAT = 1
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a TERM death


# ---------------------------------------------------------------- settings

def env(name, default, kind):
    value = os.environ.get(name, "")
    if value.strip() == "":
        return default
    try:
        return kind(value)
    except ValueError:
        sys.exit(f"train.py: environment variable {name}={value!r} is not a valid {kind.__name__}")


def parse_args():
    p = argparse.ArgumentParser(description="Train a small CNN on Fashion-MNIST with spot-safe checkpoints.")
    p.add_argument("--epochs", type=int, default=env("EPOCHS", 8, int))
    p.add_argument("--batch-size", type=int, default=env("BATCH_SIZE", 64, int))
    p.add_argument("--lr", type=float, default=env("LR", 1e-3, float))
    p.add_argument("--seed", type=int, default=env("SEED", 1, int))
    p.add_argument("--threads", type=int, default=env("NUM_THREADS", 2, int))
    p.add_argument("--checkpoint-every-seconds", type=float, default=env("CHECKPOINT_EVERY_SECONDS", 5.0, float))
    p.add_argument("--checkpoint-every-steps", type=int, default=env("CHECKPOINT_EVERY_STEPS", 0, int))
    p.add_argument("--log-every", type=int, default=env("LOG_EVERY", 100, int))
    p.add_argument("--data-dir", default=os.environ.get("DATA_DIR") or "/usr/share/datasets/fashion-mnist")
    p.add_argument("--checkpoint-dir", default=os.environ.get("SPOTML_CHECKPOINT_DIR") or "ckpt")
    p.add_argument("--out-dir", default=os.environ.get("OUT_DIR") or "out")
    a = p.parse_args()
    if a.epochs < 1 or a.batch_size < 1 or a.lr <= 0 or a.threads < 1:
        p.error("epochs, batch size and threads must be >= 1 and lr > 0")
    return a


# ---------------------------------------------------------------- logging

class Log:
    """Prints to stdout (flushed) and appends to train-attempt<N>.log."""

    def __init__(self, path):
        self.file = open(path, "a", buffering=1)

    def __call__(self, msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.file.write(line + "\n")


# ---------------------------------------------------------------- data

def report_progress(done, total, message):
    """Tell spotml how far the task is: one line in $SPOTML_PROGRESS_FILE
    (done/total, then a message), replaced atomically. The console and
    `spotml get tasks` show it."""
    path = os.environ.get("SPOTML_PROGRESS_FILE")
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{done}/{total} {message}\n")
    os.replace(tmp, path)


def read_idx(path):
    """Reads a gzip'd IDX file (the MNIST format) into a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {arr.size} bytes of data for shape {dims}")
    return arr.reshape(dims)


def load_split(data_dir, prefix):
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
    # Kept as uint8 (47 MB for the training set); batches are scaled to 0..1 as they are used.
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def to_input(images_u8):
    return images_u8.float().div_(255.0)


def epoch_order(seed, epoch, n):
    """The shuffled order of one epoch: a pure function of (seed, epoch), so a
    resumed run sees exactly the batches the interrupted one would have."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))


# ---------------------------------------------------------------- model

class Net(nn.Module):
    """conv(1->16) -> pool -> conv(16->32) -> pool -> fc(1568->64) -> fc(64->10). 106k parameters."""

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


@torch.no_grad()
def evaluate(model, images, labels, batch=100):
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, images.shape[0], batch):
        logits = model(to_input(images[i:i + batch]))
        y = labels[i:i + batch]
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train()
    n = images.shape[0]
    return loss_sum / n, correct / n


# ---------------------------------------------------------------- checkpoints

def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(ckpt_dir, state):
    """Writes ckpt.pt atomically: a temporary file in the same directory,
    flushed to disk, then renamed over the old checkpoint."""
    os.makedirs(ckpt_dir, exist_ok=True)
    final = os.path.join(ckpt_dir, CKPT_NAME)
    tmp = os.path.join(ckpt_dir, f".{CKPT_NAME}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(ckpt_dir)
    return os.path.getsize(final)


def load_checkpoint(ckpt_dir, log):
    path = os.path.join(ckpt_dir, CKPT_NAME)
    # Leftovers of a write that was cut short are never read; clear them.
    if os.path.isdir(ckpt_dir):
        for name in os.listdir(ckpt_dir):
            if name.startswith(f".{CKPT_NAME}.tmp-"):
                try:
                    os.remove(os.path.join(ckpt_dir, name))
                except OSError:
                    pass
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu")
        if state.get("format") != CKPT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r}, want {CKPT_FORMAT}")
        return state
    except Exception as e:  # a damaged checkpoint must not make every retry fail
        log(f"WARNING: cannot use checkpoint {path} ({type(e).__name__}: {e}); starting from scratch")
        return None


# ---------------------------------------------------------------- ONNX

def export_onnx(model, path):
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28, dtype=torch.float32)
    torch.onnx.export(
        model, dummy, path,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=13, do_constant_folding=True,
    )


def _np_conv(x, w, b, pads, strides, dilations, group):
    if group != 1 or any(d != 1 for d in dilations):
        raise NotImplementedError("Conv with groups/dilations")
    ph0, pw0, ph1, pw1 = pads
    x = np.pad(x, ((0, 0), (0, 0), (ph0, ph1), (pw0, pw1)))
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    sh, sw = strides
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    cols = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    out = np.einsum("nchwij,ocij->nohw", cols[:, :, :oh, :ow], w, optimize=True)
    return out + (b.reshape(1, -1, 1, 1) if b is not None else 0)


def _np_maxpool(x, kernel, strides, pads):
    if any(pads):
        raise NotImplementedError("MaxPool with padding")
    kh, kw = kernel
    sh, sw = strides
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return win.max(axis=(4, 5))


def run_onnx_numpy(model_proto, x):
    """A tiny NumPy interpreter for the handful of ops this network exports to
    (Conv, Relu, MaxPool, Flatten, Gemm, plus trivial shape ops). onnxruntime
    and onnx.reference are not available on the target image, and
    onnx.checker only validates structure, so this checks the numbers."""
    from onnx import numpy_helper
    g = model_proto.graph
    vals = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    vals[g.input[0].name] = x
    for node in g.node:
        a = {at.name: at for at in node.attribute}
        ints = lambda k, d: list(a[k].ints) if k in a else d
        i = [vals[n] if n else None for n in node.input]
        op = node.op_type
        if op == "Conv":
            y = _np_conv(i[0], i[1], i[2] if len(i) > 2 else None, ints("pads", [0, 0, 0, 0]),
                         ints("strides", [1, 1]), ints("dilations", [1, 1]), a["group"].i if "group" in a else 1)
        elif op == "Relu":
            y = np.maximum(i[0], 0)
        elif op == "MaxPool":
            y = _np_maxpool(i[0], ints("kernel_shape", None), ints("strides", [1, 1]), ints("pads", [0, 0, 0, 0]))
        elif op == "Flatten":
            ax = a["axis"].i if "axis" in a else 1
            y = i[0].reshape(int(np.prod(i[0].shape[:ax])), -1)
        elif op == "Gemm":
            A, B = i[0], i[1]
            if "transA" in a and a["transA"].i:
                A = A.T
            if "transB" in a and a["transB"].i:
                B = B.T
            alpha = a["alpha"].f if "alpha" in a else 1.0
            beta = a["beta"].f if "beta" in a else 1.0
            y = alpha * (A @ B) + (beta * i[2] if len(i) > 2 and i[2] is not None else 0)
        elif op == "Identity":
            y = i[0]
        elif op == "Constant":
            y = numpy_helper.to_array(a["value"].t)
        elif op == "Reshape":
            y = i[0].reshape([int(d) for d in i[1]])
        else:
            raise NotImplementedError(f"op {op}")
        vals[node.output[0]] = y.astype(np.float32) if isinstance(y, np.ndarray) and y.dtype == np.float64 else y
    return vals[g.output[0].name]


def verify_onnx(path, model, sample_u8, log):
    import onnx
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)  # structure + shape inference
    g = proto.graph
    ins = [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in g.input]
    outs = [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in g.output]
    want_in, want_out = [("input", ["batch", 1, 28, 28])], [("logits", ["batch", 10])]
    if ins != want_in or outs != want_out:
        raise RuntimeError(f"ONNX signature {ins} -> {outs}, want {want_in} -> {want_out}")
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    ops = sorted({n.op_type for n in g.node})
    log(f"onnx: checker ok, opset {opset}, ops {ops}, input {ins[0]}, output {outs[0]}")
    x = to_input(sample_u8)
    with torch.no_grad():
        model.eval()
        ref = model(x).numpy()
    try:
        got = run_onnx_numpy(proto, x.numpy())
    except NotImplementedError as e:
        log(f"onnx: numeric check skipped ({e} not in the NumPy interpreter)")
        return None
    err = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    if err > 1e-3 or agree < 1.0:
        raise RuntimeError(f"ONNX output differs from torch: max abs diff {err:g}, argmax agreement {agree:.4f}")
    log(f"onnx: NumPy run of the graph matches torch on {x.shape[0]} test images (max abs diff {err:.2e})")
    return err


# ---------------------------------------------------------------- main

class Terminated(Exception):
    pass


def main():
    args = parse_args()
    attempt = env("SPOTML_ATTEMPT", 1, int)
    log = Log(f"train-attempt{attempt}.log")
    t_attempt = time.time()

    # SIGTERM means an eviction notice (or a cancel). Before training starts
    # there is nothing to save and we leave at once; during training the loop
    # finishes the current step, saves a checkpoint and exits 143.
    phase = {"name": "setup"}
    stop = {"requested": False}

    def on_term(signum, frame):
        stop["requested"] = True
        if phase["name"] != "train":
            raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    try:
        return run(args, attempt, log, t_attempt, phase, stop)
    except Terminated:
        log(f"SIGTERM during {phase['name']}; exiting {EXIT_TERMINATED} "
            f"(the last checkpoint in {os.path.abspath(args.checkpoint_dir)} stands)")
        return EXIT_TERMINATED


def run(args, attempt, log, t_attempt, phase, stop):
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    ckpt_dir = os.path.abspath(args.checkpoint_dir)
    ident = " ".join(f"{k}={os.environ[k]}" for k in ("SPOTML_JOB", "SPOTML_TASK", "SPOTML_TASK_INDEX", "SPOTML_NODE")
                     if os.environ.get(k))
    log(f"fashion-mnist attempt {attempt}{' ' + ident if ident else ''}: epochs={args.epochs} "
        f"batch_size={args.batch_size} lr={args.lr} seed={args.seed} threads={args.threads} "
        f"checkpoint_dir={ckpt_dir} (every {args.checkpoint_every_seconds:g}s"
        f"{f' / {args.checkpoint_every_steps} steps' if args.checkpoint_every_steps > 0 else ''}, on SIGTERM)")

    t0 = time.time()
    train_x, train_y = load_split(args.data_dir, "train")
    test_x, test_y = load_split(args.data_dir, "t10k")
    n = train_x.shape[0]
    steps_per_epoch = (n + args.batch_size - 1) // args.batch_size
    log(f"data: {n} train / {test_x.shape[0]} test images from {args.data_dir} in {time.time() - t0:.1f}s; "
        f"{steps_per_epoch} steps per epoch")

    torch.manual_seed(args.seed)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    config = {"batch_size": args.batch_size, "seed": args.seed, "arch": "cnn16-32-fc64"}

    # ---- resume
    epoch, step, global_step = 0, 0, 0
    loss_sum, loss_n = 0.0, 0
    train_seconds = 0.0
    attempts = []
    history = []
    resumed_from = None
    state = load_checkpoint(ckpt_dir, log)
    if state is not None and state["config"] != config:
        log(f"WARNING: checkpoint was made with {state['config']}, this run is {config}; starting from scratch")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for g in opt.param_groups:  # LR from this run's settings
            g["lr"] = args.lr
        torch.set_rng_state(state["torch_rng"])
        epoch, step, global_step = state["epoch"], state["step"], state["global_step"]
        loss_sum, loss_n = state["loss_sum"], state["loss_n"]
        train_seconds = state["train_seconds"]
        attempts = state["attempts"]
        history = state["history"]
        # epoch is 1-based here, as in the log lines; step counts within that epoch.
        resumed_from = {"epoch": epoch + 1, "step": step, "global_step": global_step, "attempt": state["attempt"]}
        log(f"resumed from checkpoint at epoch {epoch + 1} step {step} (global step {global_step}, "
            f"saved by attempt {state['attempt']} with {train_seconds:.1f}s of training) (attempt {attempt})")
    else:
        log(f"no checkpoint, starting from scratch (attempt {attempt})")
    if attempt not in attempts:
        attempts.append(attempt)

    def snapshot(reason):
        t = time.time()
        size = save_checkpoint(ckpt_dir, {
            "format": CKPT_FORMAT, "config": config, "attempt": attempt, "reason": reason,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch, "step": step, "global_step": global_step,
            "loss_sum": loss_sum, "loss_n": loss_n,
            "train_seconds": train_seconds + (time.time() - seg_start),
            "attempts": attempts, "history": history, "saved_at": time.time(),
        })
        return size, time.time() - t

    # ---- train
    model.train()
    seg_start = time.time()  # training time of this attempt runs from here
    last_ckpt_t, last_ckpt_step = time.time(), global_step
    last_log_t, last_log_step = time.time(), global_step
    phase["name"] = "train"
    while epoch < args.epochs:
        order = epoch_order(args.seed, epoch, n)
        while step < steps_per_epoch:
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x, y = to_input(train_x[idx]), train_y[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            step += 1
            global_step += 1
            loss_sum += loss.item() * y.shape[0]
            loss_n += y.shape[0]

            if stop["requested"]:
                size, dt = snapshot("sigterm")
                log(f"SIGTERM: saved checkpoint at epoch {epoch + 1} step {step} (global step {global_step}, "
                    f"{size / 1e6:.2f} MB, {dt * 1000:.0f} ms); exiting {EXIT_TERMINATED}")
                return EXIT_TERMINATED
            if args.log_every > 0 and global_step % args.log_every == 0:
                now = time.time()
                log(f"epoch {epoch + 1}/{args.epochs} step {step}/{steps_per_epoch} (global {global_step}) "
                    f"loss {loss.item():.4f} avg {loss_sum / loss_n:.4f} "
                    f"{(global_step - last_log_step) / max(now - last_log_t, 1e-9):.0f} steps/s")
                last_log_t, last_log_step = now, global_step
                report_progress(global_step, args.epochs * steps_per_epoch,
                                f"epoch {epoch + 1}/{args.epochs} step {step}/{steps_per_epoch} loss {loss_sum / loss_n:.3f}")
            due_t = args.checkpoint_every_seconds > 0 and time.time() - last_ckpt_t >= args.checkpoint_every_seconds
            due_s = args.checkpoint_every_steps > 0 and global_step - last_ckpt_step >= args.checkpoint_every_steps
            if (due_t or due_s) and step < steps_per_epoch:
                size, dt = snapshot("periodic")
                log(f"checkpoint: epoch {epoch + 1} step {step} (global {global_step}) {size / 1e6:.2f} MB "
                    f"in {dt * 1000:.0f} ms")
                last_ckpt_t, last_ckpt_step = time.time(), global_step

        t_eval = time.time()
        test_loss, test_acc = evaluate(model, test_x, test_y)
        t_eval = time.time() - t_eval
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(loss_n, 1),
                        "test_loss": test_loss, "test_accuracy": test_acc, "global_step": global_step})
        log(f"epoch {epoch + 1}/{args.epochs} done: train loss {loss_sum / max(loss_n, 1):.4f} "
            f"test loss {test_loss:.4f} test accuracy {test_acc * 100:.2f}% "
            f"(eval {t_eval:.1f}s; {train_seconds + time.time() - seg_start:.1f}s of training)")
        report_progress(global_step, args.epochs * steps_per_epoch,
                        f"epoch {epoch + 1}/{args.epochs} done, test accuracy {test_acc * 100:.1f}%")
        epoch, step = epoch + 1, 0
        loss_sum, loss_n = 0.0, 0
        size, dt = snapshot("epoch")
        log(f"checkpoint: end of epoch {epoch} (global {global_step}) {size / 1e6:.2f} MB in {dt * 1000:.0f} ms")
        last_ckpt_t, last_ckpt_step = time.time(), global_step
        if stop["requested"]:
            log(f"SIGTERM: checkpoint at end of epoch {epoch} stands; exiting {EXIT_TERMINATED}")
            return EXIT_TERMINATED

    # ---- finish: training is done and checkpointed; a SIGTERM from here on
    # exits at once and a retry only redoes the evaluation and export.
    phase["name"] = "finish"
    train_seconds += time.time() - seg_start
    if stop["requested"]:
        raise Terminated()
    test_loss, test_acc = evaluate(model, test_x, test_y)
    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "model.onnx")
    t_export = time.time()
    export_onnx(model, onnx_path)
    log(f"onnx: exported {onnx_path} ({os.path.getsize(onnx_path) / 1e6:.2f} MB) in {time.time() - t_export:.1f}s")
    onnx_err = verify_onnx(onnx_path, model, test_x[:256], log)
    torch.save(model.state_dict(), os.path.join(args.out_dir, "model.pt"))
    metrics = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "train_loss_last_epoch": history[-1]["train_loss"] if history else None,
        "epochs": args.epochs,
        "global_steps": global_step,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 2),
        "attempt_seconds": round(time.time() - t_attempt, 2),
        "attempts_seen": attempts,
        "attempt": attempt,
        "resumed_from_step": resumed_from["global_step"] if resumed_from else None,
        "resumed_from": resumed_from,
        "history": history,
        "onnx": {"file": "model.onnx", "opset": 13, "input": "input [batch,1,28,28] float32 0..1",
                 "output": "logits [batch,10]", "max_abs_diff_vs_torch": onnx_err},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    tmp = os.path.join(args.out_dir, ".metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(args.out_dir, "metrics.json"))
    log(f"done: test accuracy {test_acc * 100:.2f}% test loss {test_loss:.4f} after {args.epochs} epochs, "
        f"{train_seconds:.1f}s of training over attempts {attempts}; wrote {args.out_dir}/model.onnx, "
        f"{args.out_dir}/model.pt, {args.out_dir}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
