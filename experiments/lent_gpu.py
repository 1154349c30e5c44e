"""What experiments/runner.py --device gpu does around its runs on a lent GPU machine, which has no ../shared and
no package registry, and a time limit per command: the environment in the log, ujson from a carried wheel, CUDA
MPS so that many processes share the GPU, and what comes back (the runs without checkpoints, Figure 5's
classifier halves of their best.pt)."""
import glob
import os
import shutil
import subprocess
import tarfile

# The GPU, driver, torch, CUDA and transformers versions, against requirements.txt.
VERSIONS = """import platform, re, torch, transformers
need = {re.split(r"[<>=]", l)[0]: l.split(">=")[1].strip() for l in open("requirements.txt")
        if ">=" in l and not l.startswith("#")}
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "(requirements.txt: transformers>=%s)" % need["transformers"])"""
CARRIED_SITE = "/tmp/gpu_site"  # where the carried ujson wheel is installed
MPS_DIRS = {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps_pipe", "CUDA_MPS_LOG_DIRECTORY": "/tmp/mps_log"}


def _output(argv, **kw):
    """stdout and stderr of argv, stripped; the exit status."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    return (proc.stdout + proc.stderr).strip(), proc.returncode


def environment(python, say):
    say("environment")
    if shutil.which("nvidia-smi"):
        say(_output(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])[0])
    else:
        say("no nvidia-smi")
    say(_output([python, "-c", VERSIONS])[0])


def ujson(python, say):
    """prepro.py needs ujson, which GPU images may lack: the wheel carried in .whl/ installed, else False."""
    if _output([python, "-c", "import ujson"])[1] == 0:
        return True
    wheels = glob.glob(".whl/ujson-*.whl")
    if not wheels:
        say("no ujson here and no .whl/ujson-*.whl carried")
        return False
    text, code = _output([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--upgrade",
                          "--target", CARRIED_SITE, *wheels])
    if code:
        say(text)
        return False
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [CARRIED_SITE, os.environ.get("PYTHONPATH")]))
    say("ujson from .whl/")
    return True


def mps_start(python, say):
    """Several processes share the GPU through CUDA MPS where it starts, else by time-slicing."""
    if not shutil.which("nvidia-cuda-mps-control"):
        say("no nvidia-cuda-mps-control: time-slicing")
        return
    os.environ.update(MPS_DIRS)
    for folder in MPS_DIRS.values():
        os.makedirs(folder, exist_ok=True)
    if _output(["nvidia-cuda-mps-control", "-d"])[1] == 0 and _output(
            [python, "-c", "import torch; print(torch.ones(2, device='cuda').sum().item())"], timeout=60)[1] == 0:
        say("CUDA MPS on")
        return
    mps_stop()
    for name in MPS_DIRS:
        os.environ.pop(name)
    say("CUDA MPS did not start: time-slicing")


def mps_stop():
    if "CUDA_MPS_PIPE_DIRECTORY" in os.environ:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, capture_output=True)


def bundle(out, folder, best, python, say):
    """What comes back, in ``folder``: Figure 5's halves of the checkpoints ``best`` (halves.json, by
    experiments/plot.py halves) and the runs under ``out`` without checkpoints (runs.tar.gz)."""
    if best:
        with open(os.path.join(folder, "halves.json"), "w") as fh:
            proc = subprocess.run([python, "experiments/plot.py", "halves", *best], stdout=fh, stderr=subprocess.PIPE,
                                  text=True)
        if proc.stderr:
            say(proc.stderr.strip())
    out = os.path.normpath(out)
    with tarfile.open(os.path.join(folder, "runs.tar.gz"), "w:gz") as tar:
        tar.add(out, arcname=os.path.basename(out),
                filter=lambda info: None if info.name.endswith(".pt") or os.path.basename(info.name) == "run.lock"
                else info)
    say(f"wrote {folder}: {' '.join(sorted(os.listdir(folder)))}")
