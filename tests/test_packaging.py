"""Packaging: the wheel and the sdist carry the shipped configs, so that an installed bertpld runs
`bertpld pretrain --config demo` from any directory (not only from inside the checkout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

from tests.conftest import make_prepared_data

ROOT = Path(__file__).resolve().parent.parent
# What a build reads. Built from a copy: building in the checkout would write build/ and
# bertpld.egg-info/ into a tree that other processes may be using.
SOURCES = ["pyproject.toml", "README.md", "bertpld", "configs"]
SHIPPED = sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))
BACKEND = "import sys; from setuptools import build_meta as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"


def build(kind: str, src: Path, out: Path) -> Path:
    """`build_sdist` or `build_wheel` of the setuptools backend in `src`, as pip calls it."""
    done = subprocess.run(
        [sys.executable, "-c", BACKEND, kind, str(out)], cwd=src, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH: nothing may lead Python back into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


# Runs inside the fresh environment: where bertpld and its configs were imported from.
PROBE = textwrap.dedent(
    """
    import json, sys
    import bertpld, bertpld.configs
    from bertpld.config import CONFIG_DIR, ConfigError, resolve_config_path
    try:
        resolve_config_path("no-such-config")
        unknown = ""
    except ConfigError as e:
        unknown = str(e)
    print(json.dumps({
        "bertpld": bertpld.__file__, "configs": bertpld.configs.__file__, "config_dir": str(CONFIG_DIR),
        "demo": str(resolve_config_path("demo")), "unknown": unknown, "sys_path": sys.path,
    }))
    """
)


def test_installed_wheel_finds_its_configs_from_any_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        p = ROOT / name
        (shutil.copytree(p, src / name, ignore=junk) if p.is_dir() else shutil.copy2(p, src / name))

    # The wheel from the tree (`pip install .`) and the one from the sdist (`pip install bertpld.tar.gz`)
    # both hold every module and every shipped config.
    wheel = build("build_wheel", src, tmp_path / "dist")
    sdist = build("build_sdist", src, tmp_path / "sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel_from_sdist = build("build_wheel", unpacked, tmp_path / "dist_from_sdist")
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bertpld").rglob("*.py")}
    configs = {f"bertpld/configs/{name}.toml" for name in SHIPPED}
    for whl in (wheel, wheel_from_sdist):
        names = set(zipfile.ZipFile(whl).namelist())
        assert not (modules | configs) - names, f"{whl.name} lacks {sorted((modules | configs) - names)}"

    # A fresh environment: bertpld only from the wheel; torch & co. from the site-packages of the Python
    # running this test, after the environment's own (--system-site-packages, also when that Python is
    # itself a venv). Its editable bertpld comes later on sys.path and must not be the one imported.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (own,) = (venv / "lib").glob("python3*/site-packages")
    (own / "outer.pth").write_text("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in outer))
    python, bertpld = venv / "bin" / "python", venv / "bin" / "bertpld"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    done = subprocess.run([*pip, "--ignore-installed", wheel], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run(
        [python, "-c", PROBE], cwd=elsewhere, env=clean_env(), capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    where = json.loads(probe.stdout)
    package = Path(where["bertpld"]).parent
    assert package.is_relative_to(venv), where["bertpld"]
    assert Path(where["configs"]).parent == package / "configs"
    assert Path(where["config_dir"]) == package / "configs"
    assert Path(where["demo"]) == package / "configs" / "demo.toml"
    assert not [p for p in where["sys_path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    assert f"not a name in configs/ ({', '.join(SHIPPED)})" in where["unknown"]

    data = make_prepared_data(tmp_path, vocab_size=400, val_fraction=0.1)
    tiny = {
        "model.num_layers": 1,
        "model.hidden_size": 32,
        "model.intermediate_size": 64,
        "train.global_batch_size": 4,
        "impl.micro_batch_size": 4,
        "impl.threads": 1,
    }
    sets = [a for k, v in tiny.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "run"
    cmd = [bertpld, "pretrain", "--config", "demo", "--data", data, "--out", out, "--max-steps", "1", *sets]
    run = subprocess.run(cmd, cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["data"]["mask_prob"] == 0.3  # demo's (the default is 0.15)
    assert resolved["model"]["position_init"] == "sinusoidal"  # demo's
    assert resolved["model"]["num_layers"] == 1  # --set's
