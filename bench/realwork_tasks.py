"""The real-work benchmark's workloads: their data, the functions the workers run, and
the check of their results.

Workers import this module by name under every start method, so it imports only the
standard library at the top; a task imports its own library (numpy, Pillow, scikit-learn)
when it first runs, which costs nothing once the script's own imports have loaded it.

Each workload's data is made by :func:`prepare`, from a fixed seed, into a directory that
every measurement of a run reads; :func:`prepare` also runs the workload in one process
to record the expected result (and how long that took: the serial reference).
"""

from __future__ import annotations

import collections
import importlib
import json
import math
import os
import random
import time

SEED = 14


# ----- the functions the workers run -----------------------------------------------


def sha256_file(path):
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def json_summary(text):
    """A small summary, so that the 1 MB documents travel one way only."""
    records = json.loads(text)
    return (len(records), round(sum(r["score"] for r in records), 6),
            sum(r["active"] for r in records), len({r["name"] for r in records}))


def word_counts(text):
    return collections.Counter(text.split())


def svd_summary(matrix):
    import numpy as np

    u, s, vt = np.linalg.svd(matrix)
    return (float(s[0]), float(s[-1]), float(np.abs(u[:, 0]).sum()))


def thumbnail(job):
    """Decodes a JPEG, resizes it (Lanczos), writes the thumbnail as a JPEG."""
    from PIL import Image
    import zlib

    src, dst = job
    with Image.open(src) as im:
        small = im.convert("RGB").resize((256, 192), Image.LANCZOS)
    small.save(dst, "JPEG", quality=85)
    return os.path.basename(dst), zlib.crc32(small.tobytes())


def fit_fold(job):
    """Fits a logistic regression on every fold but one and scores it on that one."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    path, fold, folds = job
    with np.load(path) as d:
        x, y = d["x"], d["y"]
    test = np.arange(len(y)) % folds == fold
    model = LogisticRegression(max_iter=500).fit(x[~test], y[~test])
    return fold, round(float(model.score(x[test], y[test])), 6)


def nap_or_spin(job):
    """Sleeps or busy-waits (holding the CPU, as Python code does) for ``us`` µs."""
    kind, us = job
    if kind == "sleep":
        time.sleep(us / 1e6)
    else:
        end = time.perf_counter() + us / 1e6
        while time.perf_counter() < end:
            pass
    return us


# ----- the workloads ---------------------------------------------------------------
#
# A workload is a dict:
#   title, api ("map" or "imap_unordered"), needs (modules that must import, else the
#   workload is skipped), imports (what a user's script imports at its top for it),
#   task, make(root, size) -> manifest fields, items(root, manifest) -> task arguments,
#   collect(results) -> value (run inside the timed section, as the user's code would),
#   sizes: {"full": ..., "quick": ...}.


def _rng(name):
    return random.Random(f"{SEED}:{name}")


def _make_files(root, n):
    rng = _rng("files")
    paths = []
    for i in range(n):
        d = os.path.join(root, f"{i // 500:03d}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"{i:05d}.bin")
        with open(p, "wb") as f:
            f.write(rng.randbytes(rng.randint(1 << 10, 64 << 10)))
        paths.append(os.path.relpath(p, root))
    return {"files": paths}


def _make_json(root, n):
    """Documents of 6,700 records (~1 MB) drawn from 20,000 made at random."""
    rng = _rng("json")
    names = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 12))) for _ in range(2000)]
    pool = [{"name": rng.choice(names), "score": round(rng.uniform(-1e3, 1e3), 3),
             "active": rng.random() < 0.5, "tags": rng.sample(names, rng.randint(0, 4)),
             "pos": {"x": rng.randint(-10**6, 10**6), "y": rng.random()}}
            for _ in range(20_000)]
    for i in range(n):
        records = [{"id": k, **r} for k, r in enumerate(rng.choices(pool, k=6700))]
        with open(os.path.join(root, f"{i:04d}.json"), "w") as f:
            f.write(json.dumps(records))
    return {"docs": n}


def _load_json(root, m):
    out = []
    for i in range(m["docs"]):
        with open(os.path.join(root, f"{i:04d}.json")) as f:
            out.append(f.read())
    return out


def _make_text(root, n):
    """Text over a 5,000-word vocabulary with Zipf frequencies, in 256 KiB chunks."""
    rng = _rng("text")
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 10))) for _ in range(5000)]
    cum, total = [], 0.0
    for rank in range(1, len(vocab) + 1):
        total += 1.0 / rank
        cum.append(total)
    for i in range(n):
        words = rng.choices(vocab, cum_weights=cum, k=256 * 1024 // 6)
        lines = [" ".join(words[j:j + 12]) for j in range(0, len(words), 12)]
        with open(os.path.join(root, f"{i:04d}.txt"), "w") as f:
            f.write("\n".join(lines))
    return {"chunks": n}


def _load_text(root, m):
    out = []
    for i in range(m["chunks"]):
        with open(os.path.join(root, f"{i:04d}.txt")) as f:
            out.append(f.read())
    return out


def _make_matrices(root, n):
    import numpy as np

    a = np.random.default_rng(SEED).standard_normal((n, 200, 200))
    np.save(os.path.join(root, "matrices.npy"), a)
    return {"matrices": n}


def _load_matrices(root, m):
    import numpy as np

    return list(np.load(os.path.join(root, "matrices.npy")))


def _make_images(root, n):
    """Smooth colour fields (a 32×24 random image scaled up), 1024×768, as JPEGs."""
    from PIL import Image

    rng = _rng("images")
    os.makedirs(os.path.join(root, "in"), exist_ok=True)
    for i in range(n):
        small = Image.frombytes("RGB", (32, 24), rng.randbytes(32 * 24 * 3))
        small.resize((1024, 768), Image.BICUBIC).save(os.path.join(root, "in", f"{i:04d}.jpg"), "JPEG", quality=90)
    return {"images": n}


def _image_jobs(root, m):
    out = os.path.join(root, "out")
    os.makedirs(out, exist_ok=True)
    return [(os.path.join(root, "in", f"{i:04d}.jpg"), os.path.join(out, f"{i:04d}.jpg")) for i in range(m["images"])]


def _make_dataset(root, folds):
    """2,500 samples per fold: 20,000 for 8 folds."""
    import numpy as np
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=2500 * folds, n_features=40, n_informative=10, random_state=SEED)
    np.savez(os.path.join(root, "dataset.npz"), x=x, y=y)
    return {"folds": folds}


def _make_naps(root, n):
    rng = _rng("naps")
    return {"jobs": [(rng.choice(("sleep", "spin")), rng.randint(0, 2000)) for _ in range(n)]}


def _counter_total(results):
    total = collections.Counter()
    for c in results:
        total.update(c)
    return total


WORKLOADS = {
    "hash_files": {
        "title": "hash files: sha256 of {n:,} files of 1–64 KiB, `map`",
        "api": "map", "needs": (), "imports": ("hashlib",), "task": sha256_file,
        "make": _make_files,
        "items": lambda root, m: [os.path.join(root, p) for p in m["files"]],
        "collect": list,
        "sizes": {"full": 8000, "quick": 2000},
    },
    "parse_json": {
        "title": "parse JSON: `json.loads` of {n} strings of ~1 MB, a small summary back, `map`",
        "api": "map", "needs": (), "imports": ("json",), "task": json_summary,
        "make": _make_json, "items": _load_json,
        "collect": list,
        "sizes": {"full": 200, "quick": 30},
    },
    "word_counts": {
        "title": "word counts: `Counter` over {n} text chunks of 256 KiB, merged as they come, `imap_unordered`",
        "api": "imap_unordered", "needs": (), "imports": ("collections",), "task": word_counts,
        "make": _make_text, "items": _load_text,
        "collect": _counter_total,
        "sizes": {"full": 96, "quick": 32},
    },
    "numpy_svd": {
        "title": "numpy: SVD of {n} random 200×200 matrices (sent as arrays), `map`",
        "api": "map", "needs": ("numpy",), "imports": ("numpy",), "task": svd_summary,
        "make": _make_matrices, "items": _load_matrices,
        "collect": list,
        "sizes": {"full": 120, "quick": 32},
    },
    "pillow_resize": {
        "title": "Pillow: {n} JPEGs of 1024×768 decoded, resized to 256×192 (Lanczos), written, `map`",
        "api": "map", "needs": ("PIL",), "imports": ("PIL.Image",), "task": thumbnail,
        "make": _make_images, "items": _image_jobs,
        "collect": list,
        "sizes": {"full": 96, "quick": 24},
    },
    "sklearn_folds": {
        "title": "scikit-learn: `LogisticRegression` fitted per fold, {n} folds of 2,500×40 (all read from one file), `map`",
        "api": "map", "needs": ("numpy", "sklearn"), "imports": ("numpy", "sklearn.linear_model"), "task": fit_fold,
        "make": _make_dataset,
        "items": lambda root, m: [(os.path.join(root, "dataset.npz"), i, m["folds"]) for i in range(m["folds"])],
        "collect": list,
        "sizes": {"full": 8, "quick": 5},
    },
    "tiny_tasks": {
        "title": "tiny tasks: {n:,} calls of 0–2 ms, half sleep, half busy-wait, `imap_unordered`",
        "api": "imap_unordered", "needs": (), "imports": (), "task": nap_or_spin,
        "make": _make_naps, "items": lambda root, m: [tuple(j) for j in m["jobs"]],
        "collect": list,
        "sizes": {"full": 1000, "quick": 300},
    },
}


def missing(name):
    """The first module the workload needs that is not installed, or None."""
    import importlib.util

    for mod in WORKLOADS[name]["needs"]:
        if importlib.util.find_spec(mod) is None:
            return mod
    return None


def size(name, quick):
    return WORKLOADS[name]["sizes"]["quick" if quick else "full"]


def title(name, quick):
    return WORKLOADS[name]["title"].format(n=size(name, quick))


def prepare(name, root, quick):
    """Makes the workload's data under ``root`` and runs it once in this process: the
    expected result and the serial time (libraries already imported) go in
    ``root/manifest.json``."""
    w = WORKLOADS[name]
    os.makedirs(root, exist_ok=True)
    m = w["make"](root, size(name, quick))
    items = w["items"](root, m)
    for mod in w["imports"]:
        importlib.import_module(mod)
    t0 = time.perf_counter()
    value = w["collect"](map(w["task"], items))
    m["serial_ms"] = (time.perf_counter() - t0) * 1000
    m["expected"] = _canonical(name, value)
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(m, f)
    return m


def load(name, root):
    """The manifest and the task arguments, as a measurement reads them before its clock."""
    with open(os.path.join(root, "manifest.json")) as f:
        m = json.load(f)
    return m, WORKLOADS[name]["items"](root, m)


def same(a, b):
    """Equal, floats within 1e-6 (BLAS may sum in another order in another process)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def _canonical(name, value):
    """As JSON has it, in a fixed order where the pool returns results as they come."""
    value = json.loads(json.dumps(value))
    if WORKLOADS[name]["api"] == "imap_unordered" and isinstance(value, list):
        value.sort()
    return value


def check(name, value, manifest):
    """Raises if the pool's result differs from the one computed in one process."""
    if not same(_canonical(name, value), manifest["expected"]):
        raise AssertionError(f"{name}: the result differs from the one computed in one process")
